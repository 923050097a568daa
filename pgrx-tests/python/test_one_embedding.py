"""One embedding per search through a real driver, and a memo that is never stale.

pg_regress (one_embedding.sql) covers every query form under PREPARE/EXECUTE; here psycopg
does what applications do: its automatic preparation (a statement becomes a server-side
prepared statement at its fifth execution, and PostgreSQL may then choose a generic plan),
and explicit `prepare=True` under `plan_cache_mode = force_generic_plan` (what Npgsql's
Prepare(), JDBC server-side statements and node-postgres named statements send: Parse
with a name, then Bind/Execute). Counted with `calls` in pg_vision_loaded_models(), the
runs of the model.

Then the memo's promise: a vector computed before a model's manifest or ONNX file changed,
or before a setting that changes the result, is never served after, even within the one
transaction the memo lasts."""

import json
import os
import shutil
import struct

import pytest

import photos

pytestmark = pytest.mark.usefixtures("health")

README_SEARCH = """
SELECT id, 1 - (embedding <=> embed_efficientnet(%(img)s)) AS similarity
  FROM shop_images ORDER BY embedding <=> embed_efficientnet(%(img)s) LIMIT 10"""


def calls(conn, model="efficientnet"):
    row = conn.execute(
        "SELECT calls FROM pg_vision_loaded_models() WHERE name = %s AND tower = 'image'", (model,)
    ).fetchone()
    return row[0] if row else 0


@pytest.fixture(scope="module")
def shop(app):
    """The application's connection with a 2,000-row HNSW table of random unit vectors."""
    app.execute("""
        CREATE TEMP TABLE shop_images AS
        SELECT n AS id, (SELECT array_agg(random() - 0.5) FROM generate_series(1, 1280 + n * 0))::vector(1280)
                 AS embedding
          FROM generate_series(1, 2000) n""")
    app.execute("CREATE INDEX ON shop_images USING hnsw (embedding vector_cosine_ops)")
    app.execute("SELECT embed_efficientnet(%s)", (photos.jpeg_1000(),))  # loads the model
    return app


def uploads(n, start):
    """n different uploads of one picture: bytes after the JPEG's end marker are ignored
    by the decoder but make each upload new to the memo."""
    base = photos.jpeg_1000()
    return [base + struct.pack(">I", start + i) for i in range(n)]


def runs_per_execution(conn, query, images, **kwargs):
    out = []
    for img in images:
        before = calls(conn)
        rows = conn.execute(query, {"img": img}, **kwargs).fetchall()
        assert len(rows) == 10
        out.append(calls(conn) - before)
    return out


def test_psycopg_automatic_preparation_runs_the_model_once_per_search(shop):
    # Executions 1-4 are unprepared; the fifth prepares; PostgreSQL plans the next five with
    # custom plans and may then switch to a generic one: 12 cover all three.
    assert shop.prepare_threshold == 5
    assert runs_per_execution(shop, README_SEARCH, uploads(12, 0)) == [1] * 12


def test_named_statements_under_generic_plans_run_the_model_once_per_search(shop):
    shop.execute("SET plan_cache_mode = force_generic_plan")
    try:
        assert runs_per_execution(shop, README_SEARCH, uploads(6, 100), prepare=True) == [1] * 6
        generic = shop.execute(
            "SELECT sum(generic_plans) FROM pg_prepared_statements WHERE statement LIKE '%%embed_efficientnet%%'"
        ).fetchone()[0]
        assert generic >= 6, "the statement did not run under a generic plan"
        # The same upload again in one transaction: not run again, same answer. The memo
        # lasts one transaction: the next one runs the model again.
        img = uploads(1, 100)[0]
        with shop.transaction():
            first = shop.execute(README_SEARCH, {"img": img}, prepare=True).fetchall()
            before = calls(shop)
            again = shop.execute(README_SEARCH, {"img": img}, prepare=True).fetchall()
            assert calls(shop) == before and again == first
        before = calls(shop)
        shop.execute(README_SEARCH, {"img": img}, prepare=True).fetchall()
        assert calls(shop) == before + 1
    finally:
        shop.execute("RESET plan_cache_mode")


# --- the memo is never stale -------------------------------------------------------------------

@pytest.fixture
def private_models(cluster, superuser):
    """A model directory of its own holding a copy of efficientnet, set for the superuser's
    session; returns its path."""
    models = os.path.join(cluster, "memo_models")
    shutil.rmtree(models, ignore_errors=True)
    os.makedirs(models)
    repo = os.path.join(photos.REPO, "models")
    shutil.copy(os.path.join(repo, "efficientnet.json"), models)
    shutil.copy(os.path.join(repo, "efficientnet-lite0.onnx"), models)
    os.system(f"chmod -R a+rX {models}")
    superuser.execute("SELECT set_config('pg_vision.model_dir', %s, false)", (models,))
    yield models
    superuser.execute("RESET pg_vision.model_dir")
    superuser.execute("SELECT pg_vision_unload()")


def embed(conn, img):
    return conn.execute("SELECT embed_efficientnet(%s)::text", (img,)).fetchone()[0]


def replace(path, write):
    """Replaces a file the way deployments do: write a new one, rename it over the old."""
    tmp = path + ".new"
    write(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def test_a_changed_manifest_is_never_answered_from_the_memo(superuser, private_models):
    img = photos.jpeg_1000()
    with superuser.transaction():
        first = embed(superuser, img)
        assert embed(superuser, img) == first and calls(superuser) == 1
        manifest = os.path.join(private_models, "efficientnet.json")
        recipe = json.load(open(manifest))
        recipe["mean"] = [100.0, 100.0, 100.0]
        replace(manifest, lambda p: json.dump(recipe, open(p, "w")))
        changed = embed(superuser, img)
        assert changed != first, "the vector computed under the old manifest was served"
        assert calls(superuser) == 1, "the model was not loaded again for its new manifest"


def test_new_weights_under_the_same_name_are_loaded_and_used(superuser, private_models):
    img = photos.jpeg_1000()
    with superuser.transaction():
        first = embed(superuser, img)
        onnx = os.path.join(private_models, "efficientnet-lite0.onnx")
        replace(onnx, lambda p: shutil.copy(os.path.join(photos.REPO, "models", "efficientnet-lite0.onnx"), p))
        hits, misses = superuser.execute("SELECT hits, misses FROM pg_vision_memo()").fetchone()
        again = embed(superuser, img)
        assert superuser.execute("SELECT hits, misses FROM pg_vision_memo()").fetchone() == (hits, misses + 1), (
            "the vector computed with the old file was served"
        )
        assert calls(superuser) == 1, "the new file was not loaded"
    assert again == first  # the same weights in a new file: the same vector, computed again


def test_a_setting_that_changes_the_result_is_a_new_key(superuser, private_models):
    big = photos.encode(photos.collage(3072, 2304), "JPEG", quality=90)  # DCT scaling applies to it
    with superuser.transaction():
        superuser.execute("SET LOCAL pg_vision.jpeg_dct_scaling = on")
        scaled = embed(superuser, big)
        superuser.execute("SET LOCAL pg_vision.jpeg_dct_scaling = off")
        full = embed(superuser, big)
    assert full != scaled
    assert calls(superuser) == 2
