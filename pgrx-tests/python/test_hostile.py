"""Hostile calls from an ordinary role (issue 9): no input or argument may crash a backend,
restart the cluster, hang past a cancel, or lift a limit. Every call here runs as a LOGIN
role with nothing granted; the superuser only creates the extension and the test data.
The `health` fixture fails the module if any backend died by a signal or the postmaster
restarted."""

import io
import json
import os
import random
import shutil
import threading
import time

import numpy as np
import psycopg
import pytest
from PIL import Image

import photos
from helpers import cancel_latency, sqlstate

pytestmark = pytest.mark.usefixtures("health")


def jpeg(img, **kw):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def png(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


# Small enough to embed in milliseconds: used to load a model (warm-up needs a grant).
TINY_PNG = png(Image.new("RGB", (32, 32), (120, 80, 40)))


@pytest.fixture(scope="module")
def chelsea_jpeg():
    return jpeg(photos.photo("chelsea.png"))


# --- 1. memory sized by the caller ---------------------------------------------------------

def test_huge_batch_is_a_limit_error_not_an_abort(hostile):
    q = "SELECT embed_images('efficientnet', array_fill('\\x00'::bytea, ARRAY[1000000]), 1000000)"
    assert sqlstate(hostile, q)[0] == "54000"
    # IMMUTABLE with constant arguments: the planner folds it, so EXPLAIN runs it too.
    assert sqlstate(hostile, "EXPLAIN " + q)[0] == "54000"


def test_result_over_one_value_is_refused_before_any_work(hostile):
    t0 = time.monotonic()
    state, msg = sqlstate(hostile, "SELECT embed_images('efficientnet', array_fill('\\x00'::bytea, ARRAY[300000]), 4)")
    assert state == "54000" and "over PostgreSQL's limit" in msg, msg
    assert time.monotonic() - t0 < 5
    # NULL elements cost no vector: a million of them is a million NULLs, not an error.
    n = hostile.execute("SELECT cardinality(embed_images('efficientnet', array_fill(NULL::bytea, ARRAY[1000000])))").fetchone()[0]
    assert n == 1000000


def test_batch_size_bounds_and_null(hostile, chelsea_jpeg):
    assert sqlstate(hostile, "SELECT embed_images('efficientnet', ARRAY[%s::bytea], 0)", (chelsea_jpeg,))[0] == "22023"
    assert sqlstate(hostile, "SELECT embed_images('efficientnet', ARRAY[%s::bytea], 65)", (chelsea_jpeg,))[0] == "54000"
    n = hostile.execute("SELECT cardinality(embed_images('efficientnet', array_fill(%s::bytea, ARRAY[3]), 64))", (chelsea_jpeg,)).fetchone()[0]
    assert n == 3
    assert hostile.execute("SELECT embed_images('efficientnet', ARRAY[%s::bytea], NULL) IS NULL", (chelsea_jpeg,)).fetchone()[0]


def test_limits_hold_in_prepared_generic_plans(hostile, chelsea_jpeg):
    """As drivers run them: a server-side prepared statement under a generic plan, where
    the IMMUTABLE call is evaluated at run time with the bound parameters."""
    hostile.execute("SET plan_cache_mode = force_generic_plan")
    q = "SELECT cardinality(embed_images('efficientnet', array_fill(%s::bytea, ARRAY[%s]), %s))"
    for _ in range(3):
        assert hostile.execute(q, (chelsea_jpeg, 2, 2), prepare=True).fetchone()[0] == 2
    for args, want in [((chelsea_jpeg, 2, 1000000), "54000"), ((chelsea_jpeg, 2, 0), "22023"), ((chelsea_jpeg[:5000], 2, 2), "22P03")]:
        try:
            hostile.execute(q, args, prepare=True)
            state = "ok"
        except psycopg.Error as e:
            state = e.sqlstate
        assert state == want, args[1:]
    assert hostile.execute("SELECT 1").fetchone()[0] == 1


# --- 2. decode limits: lowered by anyone, raised by nobody but the superuser -------------

def test_image_limits_cannot_be_raised_by_an_ordinary_role(hostile):
    # 60 megapixels of black: a 100 KB PNG that would take 180 MB to decode.
    bomb = png(Image.new("RGB", (8000, 7500)), compress_level=9)
    hostile.execute("SET pg_vision.max_image_pixels = 2000000000")
    hostile.execute("SET pg_vision.max_image_bytes = 2000000000")
    t0 = time.monotonic()
    state, msg = sqlstate(hostile, "SELECT embed_efficientnet(%s)", (bomb,))
    assert state == "54000" and "over the limit of 50000000 pixels" in msg, msg
    assert time.monotonic() - t0 < 2
    for ceiling in ["max_image_pixels_ceiling", "max_image_bytes_ceiling", "accept_damaged_images"]:
        assert sqlstate(hostile, f"SET pg_vision.{ceiling} = 2000000000" if "ceiling" in ceiling else f"SET pg_vision.{ceiling} = on")[0] == "42501"


def test_image_limits_can_be_lowered(hostile, chelsea_jpeg):
    hostile.execute("SET pg_vision.max_image_pixels = 1000")
    state, msg = sqlstate(hostile, "SELECT embed_efficientnet(%s)", (chelsea_jpeg,))
    assert state == "54000" and "limit of 1000 pixels" in msg
    hostile.execute("RESET pg_vision.max_image_pixels")
    hostile.execute("SET pg_vision.max_image_bytes = 100")
    assert sqlstate(hostile, "SELECT embed_efficientnet(%s)", (chelsea_jpeg,))[0] == "54000"


# --- 3. text ---------------------------------------------------------------------------

def test_text_with_multibyte_punctuation_and_entities(hostile):
    for text in ["H&M hoodie – black", "H&M – & –", "&" + "–" * 20, "caf&eacute; cr&egrave;me", "T-Shirt 👕 黒 &#x1F455;"]:
        assert hostile.execute("SELECT vector_dims(embed_text('clip_fixture', %s))", (text,)).fetchone()[0] == 512, text


def test_huge_text_is_refused_fast(hostile):
    t0 = time.monotonic()
    state, msg = sqlstate(hostile, "SELECT embed_text('clip_fixture', repeat('th', 2000000))")
    assert state == "54000", msg
    assert time.monotonic() - t0 < 1.0


def test_long_word_under_the_limit_is_linear(hostile):
    # Just under the limit: one enormous word must not take BPE's quadratic time.
    hostile.execute("SET statement_timeout = '5s'")
    t0 = time.monotonic()
    hostile.execute("SELECT embed_text('clip_fixture', repeat('th', 500000))")
    assert time.monotonic() - t0 < 2.0


# --- 4. the vector type cannot be steered through search_path --------------------------

def test_vector_type_ignores_look_alike_catalogs(hostile, chelsea_jpeg):
    hostile.execute("CREATE TEMP TABLE pg_type (oid oid, typname name, typnamespace oid)")
    hostile.execute("CREATE TEMP TABLE pg_extension (oid oid, extname name, extnamespace oid)")
    hostile.execute("INSERT INTO pg_type VALUES ('int4'::regtype, 'vector', 1)")
    hostile.execute("INSERT INTO pg_extension VALUES (1, 'vector', 1)")
    hostile.execute("SET search_path = pg_temp, public")
    typ, same = hostile.execute(
        "SELECT pg_typeof(v)::text, v[1] = public.embed_image('efficientnet', %s) "
        "FROM (SELECT public.embed_images('efficientnet', ARRAY[%s::bytea]) v) s", (chelsea_jpeg, chelsea_jpeg)).fetchone()
    assert (typ, same) == ("vector[]", True)


# --- 6. cancel --------------------------------------------------------------------------

def embed_then_time_out(conn, image, timeout):
    """Embeds `image` once untimed, then again under statement_timeout = `timeout`, with the
    memo off so the second call does the work again; returns (seconds for the whole
    embedding, the second call's SQLSTATE, seconds it took)."""
    conn.execute("SET pg_vision.memo_entries = 0")
    conn.execute("SELECT embed_efficientnet(%s)", (TINY_PNG,))  # loads the model
    t0 = time.monotonic()
    conn.execute("SELECT embed_efficientnet(%s)", (image,))
    whole = time.monotonic() - t0
    conn.execute(f"SET statement_timeout = '{timeout}'")
    t0 = time.monotonic()
    state, _ = sqlstate(conn, "SELECT embed_efficientnet(%s)", (image,))
    took = time.monotonic() - t0
    conn.execute("RESET statement_timeout")
    conn.execute("RESET pg_vision.memo_entries")
    return whole, state, took


def test_cancel_a_long_inference_run(hostile, capsys):
    """One model run of 64 images (about a second of inference) stops within a second."""
    tiny = png(photos.photo("coffee.png").resize((64, 64)))
    hostile.execute("SELECT embed_efficientnet(%s)", (tiny,))  # loads the model
    q = "SELECT embed_images('efficientnet', array_fill(%s::bytea, ARRAY[64]), 64)"
    t0 = time.monotonic()
    hostile.execute(q, (tiny,))
    whole = time.monotonic() - t0
    took = cancel_latency(hostile, q, (tiny,), after=min(0.3, whole / 3))
    with capsys.disabled():
        print(f"\n  one run of 64 images: {whole:.2f} s; cancelled mid-run, stopped {took if took is None else round(took, 3)} s after pg_cancel_backend")
    assert took is not None and took < 1.0


def test_statement_timeout_stops_a_large_png_decode(hostile, capsys):
    """A 49-megapixel PNG, under the default limits: statement_timeout stops its decode."""
    rng = np.random.default_rng(7)
    h, w = 7000, 7000
    row = rng.integers(0, 255, (1, w, 3), dtype=np.uint8)
    img = Image.fromarray(np.repeat(row, h, axis=0) ^ (np.arange(h, dtype=np.uint8)[:, None, None] & 0x0F))
    data = png(img, compress_level=1)
    whole, state, took = embed_then_time_out(hostile, data, "150ms")
    with capsys.disabled():
        print(f"\n  49 MP PNG ({len(data) >> 20} MB): embeds in {whole:.2f} s; statement_timeout 150 ms stopped it after {took:.3f} s")
    assert state == "57014"
    assert took < 1.15


def test_many_scan_progressive_jpeg_is_bounded(hostile, tmp_path, capsys):
    """libjpeg-turbo decodes a JPEG in one C call that cannot be interrupted; the scan limit
    (jpeg.rs, smaller for bigger images) bounds it. A 49-megapixel JPEG re-encoded by
    jpegtran with 97 progressive scans (its script maximum is 100) must stop within about
    a second of statement_timeout firing."""
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 255, (700, 700, 3), dtype=np.uint8)).resize((7000, 7000), Image.Resampling.BILINEAR)
    noise.save(tmp_path / "big.jpg", quality=90)
    script = ["0,1,2: 0-0, 0, 0;"] + [f"{c}: {k}-{min(k + 1, 63)}, 0, 0;" for c in range(3) for k in range(1, 64, 2)]
    (tmp_path / "scans.txt").write_text("\n".join(script) + "\n")
    out = tmp_path / "many_scans.jpg"
    assert os.system(f"jpegtran -scans {tmp_path / 'scans.txt'} {tmp_path / 'big.jpg'} > {out}") == 0
    data = out.read_bytes()
    assert data.count(b"\xff\xda") == len(script)
    whole, state, took = embed_then_time_out(hostile, data, "100ms")
    with capsys.disabled():
        print(f"\n  49 MP JPEG with {len(script)} progressive scans: embeds in {whole:.2f} s; statement_timeout 100 ms stopped it after {took:.2f} s")
    assert state == "57014"
    assert took < 1.5


def test_model_load_time_is_bounded(hostile, capsys):
    """A model load cannot be interrupted inside ONNX Runtime: measure the worst case."""
    rows = []
    for model in ["efficientnet", "efficientnet_lite2", "clip_fixture", "opennsfw"]:
        hostile.execute("SELECT pg_vision_unload()")
        hostile.execute("SELECT embed_image(%s, %s)", (model, TINY_PNG))
        if model == "clip_fixture":
            hostile.execute("SELECT embed_text(%s, 'a photo')", (model,))
        rows += hostile.execute("SELECT %s, tower, load_ms FROM pg_vision_loaded_models()", (model,)).fetchall()
    with capsys.disabled():
        print("\n  model loads (not interruptible): " + ", ".join(f"{m}/{t} {ms:.0f} ms" for m, t, ms in rows))
    assert all(ms < 5000 for _, _, ms in rows)


# --- 7. threads -------------------------------------------------------------------------

def test_intra_op_threads_clamped_to_cores(hostile, chelsea_jpeg):
    cores = os.cpu_count()
    hostile.execute("SET pg_vision.intra_op_threads = 64")
    hostile.execute("SELECT pg_vision_unload()")
    hostile.execute("SELECT embed_efficientnet(%s)", (chelsea_jpeg,))
    pid = hostile.execute("SELECT pg_backend_pid()").fetchone()[0]
    threads = len(os.listdir(f"/proc/{pid}/task"))
    assert threads <= cores + 1, f"{threads} threads in a backend on {cores} cores"


# --- 8. truncated and corrupt images ---------------------------------------------------

def test_truncated_images_are_refused(hostile, superuser, chelsea_jpeg):
    cut_jpeg = chelsea_jpeg[: len(chelsea_jpeg) * 6 // 10]
    cut_png = png(photos.photo("chelsea.png"))[:20000]
    cut_prog = jpeg(photos.photo("coffee.png"), progressive=True)[:15000]
    for data in [cut_jpeg, cut_png, cut_prog]:
        state, msg = sqlstate(hostile, "SELECT embed_efficientnet(%s)", (data,))
        assert state == "22P03" and "truncated" in msg, msg
    # The superuser's legacy switch accepts them (the missing part comes out grey).
    superuser.execute("SET pg_vision.accept_damaged_images = on")
    assert superuser.execute("SELECT vector_dims(embed_efficientnet(%s))", (cut_jpeg,)).fetchone()[0] == 1280
    superuser.execute("RESET pg_vision.accept_damaged_images")


def test_webp_chunk_bomb_is_refused(hostile):
    """Found by cargo fuzz: 594 bytes whose EXIF chunk declares 2,969,567,258 bytes; the WebP
    decoder would allocate that before reading it, and a failed allocation aborts."""
    path = os.path.join(photos.REPO, "core/fuzz/regressions/decode_preprocess/oom-webp-exif-chunk-2969567258-bytes.webp")
    bomb = open(path, "rb").read()
    for q in ["SELECT image_info(%s)", "SELECT embed_efficientnet(%s)"]:
        state, msg = sqlstate(hostile, q, (bomb,))
        assert state == "22P03" and "chunk declares 2969567258 bytes" in msg, msg


# --- 9. base64 --------------------------------------------------------------------------

def test_base64_size_checked_before_decoding(hostile):
    t0 = time.monotonic()
    state, msg = sqlstate(hostile, "SELECT image_from_base64(repeat('QUJD', 25000000))")  # 100 MB of text, 75 MB decoded
    assert state == "54000", msg
    hostile.execute("SET pg_vision.max_image_bytes = 2")
    assert sqlstate(hostile, "SELECT image_from_base64('QUJD')")[0] == "54000"
    assert time.monotonic() - t0 < 5


# --- 10. NULL arguments -----------------------------------------------------------------

SAMPLE = {
    "bytea": "%(img)s::bytea", "text": "'efficientnet'", "integer": "4", "text[]": "ARRAY['emb:efficientnet']",
    "bytea[]": "ARRAY[%(img)s::bytea]", "name": "'image'", "interval": "'1 second'", "regclass": "'null_args'",
}
BY_NAME = {"checksum_column": "'checksum'"}


def test_null_arguments_never_give_internal_errors(hostile, superuser, hostile_role, chelsea_jpeg):
    """Each function called with one NULL argument and valid others (a table the role may
    write, a model, a photo) returns NULL or fails with 22004/22023, or 42501 where the
    role lacks a privilege; never XX000."""
    superuser.execute("DROP TABLE IF EXISTS null_args")
    superuser.execute("CREATE TABLE null_args (id int PRIMARY KEY, image bytea, emb vector(1280), checksum text)")
    superuser.execute(f"GRANT ALL ON null_args TO {hostile_role}")
    funcs = superuser.execute("""
        SELECT p.proname, p.prokind, array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t),
               coalesce(p.proargnames, '{}')
          FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
         WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_vision')
           AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
           AND p.prorettype <> 'trigger'::regtype AND p.pronargs > 0""").fetchall()
    assert len(funcs) >= 10
    seen = 0
    for name, kind, types, argnames in funcs:
        for pos in range(len(types)):
            if any(t.startswith("any") for t in types):
                continue  # polymorphic internals: a NULL has no type to resolve them with
            names = list(argnames) + [""] * len(types)
            args = [f"NULL::{t}" if i == pos or t not in SAMPLE else BY_NAME.get(names[i], SAMPLE[t]) for i, t in enumerate(types)]
            call = f"{'CALL' if kind == 'p' else 'SELECT'} {name}({', '.join(args)})"
            state, msg = sqlstate(hostile, call, {"img": chelsea_jpeg})
            assert state in ("ok", "22004", "22023", "42501"), f"{call}: {state} {msg}"
            seen += 1
    assert seen >= 20


# --- 11. preload ------------------------------------------------------------------------

def test_broken_preload_models_never_stop_logins(system_settings, hostile_role, cluster):
    models = os.path.join(cluster, "hostile_models")
    os.makedirs(models, exist_ok=True)
    repo_models = os.path.join(photos.REPO, "models")
    base = json.load(open(os.path.join(repo_models, "efficientnet.json")))
    shutil.copy(os.path.join(repo_models, "efficientnet-lite0.onnx"), models)
    json.dump(base, open(os.path.join(models, "efficientnet.json"), "w"))
    json.dump(dict(base, name="corrupt", onnx_file="corrupt.onnx"), open(os.path.join(models, "corrupt.json"), "w"))
    with open(os.path.join(models, "corrupt.onnx"), "wb") as f:
        f.write(os.urandom(4096))
    json.dump(dict(base, name="ghost", onnx_file="ghost.onnx"), open(os.path.join(models, "ghost.json"), "w"))
    os.system(f"chmod -R a+rX {models}")
    system_settings.set("pg_vision.model_dir", models)
    system_settings.set("pg_vision.preload_models", "corrupt, ghost, efficientnet")
    notices = []
    with photos.connect(user=hostile_role) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        assert c.execute("SELECT 1").fetchone()[0] == 1
        loaded = [r[0] for r in c.execute("SELECT name FROM pg_vision_loaded_models()").fetchall()]
    text = "\n".join(notices)
    assert '"corrupt"' in text and '"ghost"' in text, text
    assert loaded == ["efficientnet"], loaded


# --- 12. the GUC prefix ---------------------------------------------------------------------

def test_misspelt_setting_is_an_error(hostile):
    assert sqlstate(hostile, "SET pg_vision.max_image_pixel = 5")[0] == "42602"


# --- 5. threads and FATAL: terminate at random moments --------------------------------------

def test_terminate_at_random_moments(superuser, hostile_role, capsys):
    """pg_terminate_backend (and sometimes pg_cancel_backend) at random moments of
    embed_images and pg_vision_backfill on multi-megapixel photos, 80 times; the health
    fixture then checks that no backend died by a signal and the postmaster never restarted."""
    big = jpeg(photos.collage(3072, 2304))
    superuser.execute("DROP TABLE IF EXISTS hostile_backfill")
    superuser.execute("CREATE TABLE hostile_backfill (id int PRIMARY KEY, image bytea, emb vector(1280))")
    superuser.execute("INSERT INTO hostile_backfill SELECT g, %s FROM generate_series(1, 24) g", (big,))
    rng = random.Random(9)
    outcomes = {}
    for i in range(80):
        backfill = i % 3 == 2
        user = "postgres" if backfill else hostile_role
        with photos.connect(user=user) as c:
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            if backfill:
                c.execute("UPDATE hostile_backfill SET emb = NULL")
                q, params = "CALL pg_vision_backfill('hostile_backfill', 'image', ARRAY['emb:efficientnet'], batch_size => 4)", ()
            else:
                q, params = "SELECT embed_images('efficientnet', array_fill(%s::bytea, ARRAY[16]), 2)", (big,)
            how = "pg_cancel_backend" if rng.random() < 0.2 else "pg_terminate_backend"
            delay = rng.uniform(0.0, 0.7)

            def kill():
                time.sleep(delay)
                with photos.connect() as other:
                    other.execute(f"SELECT {how}(%s)", (pid,))

            result = {}

            def victim():
                try:
                    c.execute(q, params)
                    result["outcome"] = "finished"
                except (psycopg.errors.QueryCanceled, psycopg.errors.AdminShutdown, psycopg.OperationalError) as e:
                    result["outcome"] = type(e).__name__

            killer, call = threading.Thread(target=kill), threading.Thread(target=victim, daemon=True)
            killer.start()
            call.start()
            call.join(timeout=60)
            killer.join()
            assert not call.is_alive(), f"round {i}: the backend did not stop 60 s after {how} ({q})"
            outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
    with capsys.disabled():
        print(f"\n  80 random stops: {outcomes}")
    assert sum(v for k, v in outcomes.items() if k != "finished") >= 50
