#!/usr/bin/env python3
"""The baseline pg_vision replaced, rebuilt for scripts/bench/versus.py: the Python service
that answered "search by uploaded photo" (FastAPI on uvicorn).

Each uvicorn worker process holds one ModelManager, made at startup: the manifest and the
ONNX file pg_vision itself loads (<model dir>/<model>.json and its onnx_file; versus.py
passes pg_vision.model_dir), an onnxruntime InferenceSession with pg_vision's options
(intra-op threads as configured, 1 inter-op thread, ORT_ENABLE_ALL, no spinning: see
core/src/session.rs), warmed up with WARMUP_CALLS embeddings. Preprocessing is the
project's reference recipe, scripts/reference_embed.py's preprocess() (Pillow + numpy,
float32), the code pg_vision is checked against by scripts/parity.py. Each worker has one
psycopg connection with pgvector's adapters; the search is a prepared statement whose
vector goes over in binary.

The reference preprocessing is used as it is, as a service written with Pillow does it:
Pillow's antialiased BICUBIC resize of the whole decoded image (most of its cost), after
the full-size copies of exif_transpose() and convert("RGB"); float32 throughout. Faster
Pillow paths, Image.draft() (JPEG decoded at a reduced scale) or resize's reducing_gap,
would change the recipe, so the vectors would differ from pg_vision's.

  POST /search   multipart form: `file` (the image), optional `k` (default 10, at most
                 100); answers [{"id": ..., "similarity": ...}], nearest first (cosine)
  GET  /health   {"status": "ok", "model": ..., "pid": ...} once the worker is warm

Endpoints are plain `def`s, so FastAPI runs them on its thread pool: decoding, resizing and
inference release the GIL, so one worker serves concurrent requests, though the parts in
Python hold it (a worker with 6 of 8 busy connections got about 0.7 of a core, see
versus.py's spread_evenly()). With --profile
every /search answer carries a Server-Timing header (decode, preprocess, inference and
query, in ms, measured in the worker).

Usage: scripts/bench/service.py --dsn DSN --table TABLE --model-dir DIR [--model efficientnet]
           [--threads 2] [--workers N (default: one per core)] [--host 127.0.0.1] [--port 8765] [--profile]
The workers read their settings from PGV_SERVICE_* environment variables, which the
command line sets; uvicorn can also start the app itself:
  PGV_SERVICE_DSN=... PGV_SERVICE_TABLE=... PGV_SERVICE_MODEL_DIR=... uvicorn --app-dir scripts/bench service:app --workers 2
"""

import argparse
import contextlib
import io
import os
import sys
import time
from typing import Annotated

import numpy as np
import onnxruntime as ort
import psycopg
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Response, UploadFile
from PIL import Image, UnidentifiedImageError
from pgvector.psycopg import register_vector
from psycopg import sql

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for reference_embed.py
from reference_embed import load_manifest, preprocess  # noqa: E402

WARMUP_CALLS = 10
MAX_K = 100
# The service's query: `ORDER BY embedding <=> $1 LIMIT k` on the HNSW index (vector_cosine_ops).
SEARCH_SQL = "SELECT id, 1 - (embedding <=> %(q)b) AS similarity FROM {table} ORDER BY embedding <=> %(q)b LIMIT %(k)b"
ENV = {  # setting: (environment variable, default)
    "dsn": ("PGV_SERVICE_DSN", None),
    "table": ("PGV_SERVICE_TABLE", None),
    "model_dir": ("PGV_SERVICE_MODEL_DIR", None),
    "model": ("PGV_SERVICE_MODEL", "efficientnet"),
    "threads": ("PGV_SERVICE_THREADS", "2"),
    "profile": ("PGV_SERVICE_PROFILE", ""),
}


def setting(name):
    variable, default = ENV[name]
    value = os.environ.get(variable, default)
    if value is None:
        raise RuntimeError(f"{variable} is not set (scripts/bench/service.py --help)")
    return value


class ModelManager:
    """The worker's model: manifest, onnxruntime session (made and warmed once), and the
    embedding of an uploaded image with the time of each step."""

    def __init__(self, model_dir, model, threads):
        self.manifest = load_manifest(os.path.join(model_dir, f"{model}.json"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(os.path.join(model_dir, self.manifest["onnx_file"]), options,
                                            providers=["CPUExecutionProvider"])

    def warm_up(self):
        """WARMUP_CALLS embeddings of a 1000x1000 JPEG of noise; returns the last vector."""
        noise = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, "JPEG", quality=90)
        for _ in range(WARMUP_CALLS):
            vector, _ = self.embed(buf.getvalue())
        return vector

    def embed(self, data):
        """(vector, {step: ms}) for an encoded image."""
        m = self.manifest
        t0 = time.perf_counter()
        img = Image.open(io.BytesIO(data))
        img.load()
        t1 = time.perf_counter()
        tensor = preprocess(m, img)
        t2 = time.perf_counter()
        (out,) = self.session.run([m["output_name"]], {m["input_name"]: tensor})
        vector = out.reshape(-1)
        if m["l2_normalize"]:
            vector = vector / np.linalg.norm(vector)
        t3 = time.perf_counter()
        return vector, {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "inference": (t3 - t2) * 1e3}


class Catalogue:
    """The worker's database connection and its prepared search."""

    def __init__(self, dsn, table):
        self.conn = psycopg.connect(dsn, autocommit=True, application_name="pgv-service")
        register_vector(self.conn)
        self.query = sql.SQL(SEARCH_SQL).format(table=sql.Identifier(table))

    def search(self, vector, k):
        rows = self.conn.execute(self.query, {"q": vector, "k": k}, prepare=True).fetchall()
        return [{"id": id_, "similarity": similarity} for id_, similarity in rows]


STATE = {}  # this worker's "model" (ModelManager), "catalogue" (Catalogue) and "profile" (bool)


@contextlib.asynccontextmanager
async def lifespan(_app):
    model = ModelManager(setting("model_dir"), setting("model"), int(setting("threads")))
    catalogue = Catalogue(setting("dsn"), setting("table"))
    catalogue.search(model.warm_up(), 10)  # prepares the statement
    STATE.update(model=model, catalogue=catalogue, profile=bool(setting("profile")))
    yield
    catalogue.conn.close()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
def health():
    return {"status": "ok", "model": setting("model"), "pid": os.getpid()}


@app.post("/search")
def search(file: Annotated[UploadFile, File()], response: Response, k: Annotated[int, Form(ge=1, le=MAX_K)] = 10):
    try:
        vector, timing = STATE["model"].embed(file.file.read())
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise HTTPException(status_code=400, detail=f"not an image this service can embed: {e}") from e
    t0 = time.perf_counter()
    hits = STATE["catalogue"].search(vector, k)
    timing["query"] = (time.perf_counter() - t0) * 1e3
    if STATE["profile"]:
        response.headers["Server-Timing"] = ", ".join(f"{step};dur={ms:.3f}" for step, ms in timing.items())
    return hits


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", required=True, help="libpq connection string of the catalogue's database")
    ap.add_argument("--table", required=True, help="table with id and embedding vector(dim), HNSW-indexed")
    ap.add_argument("--model-dir", required=True, help="directory of the model's manifest and ONNX file")
    ap.add_argument("--model", default="efficientnet")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads per worker")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--profile", action="store_true", help="send a Server-Timing header with each search")
    args = ap.parse_args()
    for name in ENV:
        value = getattr(args, name)
        os.environ[ENV[name][0]] = ("1" if value else "") if name == "profile" else str(value)
    # No access log (one line per request would be part of every figure); a keep-alive
    # longer than uvicorn's 5 s default, as behind a load balancer.
    uvicorn.run("service:app", app_dir=os.path.dirname(os.path.abspath(__file__)), host=args.host, port=args.port,
                workers=args.workers, access_log=False, timeout_keep_alive=75)
    return 0


if __name__ == "__main__":
    sys.exit(main())
