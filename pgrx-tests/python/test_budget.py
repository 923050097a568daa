"""The memory budget across backends, end to end (pg_vision_memory, pg_vision_memory_summary).

With shared_preload_libraries = 'pg_vision' (the `cluster` fixture):
  - each model's measured size;
  - 8 concurrent sessions loading efficientnet, efficientnet_lite2 and clip_fixture (image
    and text towers) in random order under a budget that fits only part of them: the shared
    total never exceeds the budget (polled), evictions happen and show, bytes go back;
  - 53200 with model, size, usage and the setting to change when one model cannot fit;
  - a changed budget takes effect after SELECT pg_reload_conf(), in an existing session too;
  - bytes are released when a backend ends normally, with a FATAL error
    (idle_session_timeout), by pg_terminate_backend, and by pg_vision_unload(model);
  - an embed_images() batch of 64 leaves the backend's private memory where one image left it.
Then, last (the server restarts): without shared_preload_libraries, a per-connection budget
and one WARNING.

The concurrent sessions' random choices follow PGV_BUDGET_SEED (default 1).
"""

import os
import random
import threading
import time
from types import SimpleNamespace

import psycopg
import pytest

import photos

MB = 1024 * 1024
# (model, tower) pairs the sessions load, and the SQL that loads (and uses) each.
TOWERS = [("efficientnet", "image"), ("efficientnet_lite2", "image"), ("clip_fixture", "image"), ("clip_fixture", "text")]
MODELS = ("efficientnet", "efficientnet_lite2", "clip_fixture")
SESSIONS = 8
BUDGET = "pg_vision.memory_budget"


def use_sql(model, tower):
    if tower == "text":
        return f"SELECT vector_dims(embed_text('{model}', 'a red summer dress'))"
    return f"SELECT vector_dims(embed_image('{model}', %s))"


def summary(c):
    """(budget, used, backends, models, evictions, cluster_wide) from pg_vision_memory_summary."""
    return c.execute("SELECT budget, used, backends, models, evictions, cluster_wide FROM pg_vision_memory_summary").fetchone()


def rows_of(c, pid):
    return c.execute("SELECT model, tower, bytes FROM pg_vision_memory WHERE pid = %s ORDER BY 1, 2", (pid,)).fetchall()


def released(c, pid):
    """Waits up to 5 s for a backend's rows to leave pg_vision_memory; returns what is left."""
    for _ in range(100):
        left = rows_of(c, pid)
        if not left:
            return left
        time.sleep(0.05)
    return left


def anonymous_mb(pid):
    """Private (anonymous) resident memory of a backend, in MB, from /proc (the server runs here)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("Anonymous:"))


def backend_pid(c):
    return c.execute("SELECT pg_backend_pid()").fetchone()[0]


@pytest.fixture(scope="module", autouse=True)
def private_copies(module_settings):
    """These tests size budgets from models loaded the plain way, each backend holding its
    own copy (pg_vision.shared_weights off); test_shared_weights.py tests the accounting of
    shared weights, counted once for the cluster."""
    module_settings.set("pg_vision.shared_weights", "off")


@pytest.fixture(scope="module")
def image():
    return photos.shipped("chelsea.png")


@pytest.fixture(scope="module")
def sizes(cluster):
    """Each tower's measured size in bytes, loaded alone in a fresh session under the
    default budget, and each ONNX file's size."""
    photos.alter_system(BUDGET, None)
    sizes, files = {}, {}
    with photos.connect() as c:
        for model in MODELS:
            for m, tower, b, ms, _ in c.execute("SELECT * FROM pg_vision_warmup(ARRAY[%s])", (model,)).fetchall():
                sizes[(m, tower)] = (b, ms)
        files = {(n, t): fb for n, t, fb in c.execute("SELECT name, tower, file_bytes FROM pg_vision_loaded_models()").fetchall()}
    return {k: SimpleNamespace(bytes=b, load_ms=ms, file_bytes=files[k]) for k, (b, ms) in sizes.items()}


@pytest.fixture(scope="module")
def budget_mb(sizes):
    """Room for about two full sets of towers among 8 sessions that want 8."""
    total = sum(s.bytes for s in sizes.values())
    return max(int(2 * total / MB) + 1, int(max(s.bytes for s in sizes.values()) / MB) + 2)


# --- with shared_preload_libraries ------------------------------------------------------------

def test_summary_is_cluster_wide_with_preload(cluster):
    with photos.connect() as c:
        assert summary(c)[5], "pg_vision_memory_summary.cluster_wide should be true with shared_preload_libraries"


def test_every_tower_has_a_measured_size(sizes, capsys):
    with capsys.disabled():
        print()
        for (m, tower), s in sizes.items():
            print(f"  {m:20} {tower:5} {s.bytes / MB:7.1f} MB measured ({s.bytes / s.file_bytes:.2f} x its "
                  f"{s.file_bytes / MB:.1f} MB ONNX file), loaded in {s.load_ms:.0f} ms")
    assert set(sizes) == {(m, t) for m, t in TOWERS}
    assert all(s.bytes > 0 for s in sizes.values())


@pytest.fixture(scope="class")
def concurrent(cluster, module_settings, image, budget_mb):
    """8 sessions loading towers in random order under budget_mb; a poller records the
    shared total. Runs once for the tests below."""
    seed = int(os.environ.get("PGV_BUDGET_SEED", "1"))
    module_settings.set(BUDGET, budget_mb)
    with photos.connect() as c:
        evictions_before = summary(c)[4]
    stop = threading.Event()
    run = SimpleNamespace(budget_mb=budget_mb, max_used=0, over=[], polls=0, errors=[], refused=0)
    lock = threading.Lock()

    def poll():
        with photos.connect() as c:
            while not stop.is_set():
                budget, used, *_ = summary(c)
                run.polls += 1
                run.max_used = max(run.max_used, used)
                if used > budget:
                    run.over.append((used, budget))
                time.sleep(0.01)

    def session(i):
        rnd = random.Random(seed * 100 + i)
        try:
            with photos.connect() as c:
                for _ in range(12):
                    model, tower = rnd.choice(TOWERS)
                    try:
                        c.execute(use_sql(model, tower), (image,) if tower == "image" else None)
                    except psycopg.errors.OutOfMemory:
                        with lock:
                            run.refused += 1
        except Exception as e:  # anything but 53200 fails the test
            with lock:
                run.errors.append(f"session {i}: {type(e).__name__}: {e}")

    poller = threading.Thread(target=poll)
    poller.start()
    workers = [threading.Thread(target=session, args=(i,)) for i in range(SESSIONS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    poller.join()
    with photos.connect() as c:
        _, run.used_after, run.backends_after, _, evictions_after, _ = summary(c)
    run.evictions = evictions_after - evictions_before
    module_settings.reset(BUDGET)
    return run


class TestEightSessionsUnderATightBudget:
    def test_fail_only_with_53200(self, concurrent):
        assert not concurrent.errors, f"errors other than 53200: {concurrent.errors[:3]}"

    def test_shared_total_never_exceeds_the_budget(self, concurrent):
        assert concurrent.polls > 10, f"only {concurrent.polls} polls of pg_vision_memory_summary"
        assert not concurrent.over, (f"shared total over the budget: {concurrent.over[:3]}; "
                                     f"max {concurrent.max_used / MB:.1f} MB of {concurrent.budget_mb} MB")

    def test_evictions_happen_and_show_in_summary(self, concurrent, capsys):
        with capsys.disabled():
            print(f"\n  {SESSIONS} sessions, budget {concurrent.budget_mb} MB: max {concurrent.max_used / MB:.1f} MB used "
                  f"over {concurrent.polls} polls, {concurrent.evictions} evictions, {concurrent.refused} loads refused with 53200")
        assert concurrent.evictions > 0

    def test_everything_released_when_the_sessions_close(self, concurrent):
        assert concurrent.used_after == 0 and concurrent.backends_after == 0, \
            f"used {concurrent.used_after} bytes by {concurrent.backends_after} backends after every session closed"


@pytest.fixture(scope="class")
def refused(cluster, module_settings, image, sizes):
    """A budget below efficientnet_lite2's size, another session holding clip_fixture, and
    a session trying to load efficientnet_lite2: the error and the usage before and after.
    The sessions stay open for the tests below."""
    module_settings.set(BUDGET, int(sizes[("efficientnet_lite2", "image")].bytes / MB) - 1)
    with photos.connect() as holder, photos.connect() as c:
        holder.execute("SELECT pg_vision_warmup(ARRAY['clip_fixture'])")
        used_before = summary(c)[1]
        try:
            c.execute(use_sql("efficientnet_lite2", "image"), (image,))
            error = None
        except psycopg.errors.OutOfMemory as e:
            error = e
        yield SimpleNamespace(conn=c, error=error, used_before=used_before, used_after=summary(c)[1])
    module_settings.reset(BUDGET)


class TestOneModelThatCannotFit:
    def test_is_refused_with_53200(self, refused):
        assert refused.error is not None, "efficientnet_lite2 loaded under a budget smaller than itself"
        assert refused.error.sqlstate == "53200"

    def test_53200_names_model_size_budget_usage_and_setting(self, refused, capsys):
        e = refused.error
        assert e is not None
        msg, hint = e.diag.message_primary, e.diag.message_hint
        with capsys.disabled():
            print(f"\n  ERROR 53200: {msg}\n  HINT: {hint}")
        assert '"efficientnet_lite2"' in msg and "MB" in msg and "pg_vision.memory_budget" in msg and "1 backend(s)" in msg, msg
        assert "memory_budget" in (hint or ""), hint

    def test_refused_load_leaves_no_reservation(self, refused):
        assert refused.used_after == refused.used_before

    def test_raised_budget_applies_after_reload_in_the_same_session(self, refused, module_settings, budget_mb, image):
        module_settings.set(BUDGET, budget_mb)
        refused.conn.execute(use_sql("efficientnet_lite2", "image"), (image,))


@pytest.fixture
def watcher(cluster):
    with photos.connect() as c:
        yield c


def warmed_up(models):
    """A new session with `models` loaded, and its backend's pid."""
    c = photos.connect()
    c.execute("SELECT pg_vision_warmup(%s::text[])", (list(models),))
    return c, backend_pid(c)


def test_warmed_up_session_shows_in_pg_vision_memory(watcher):
    c, pid = warmed_up(["efficientnet"])
    try:
        assert len(rows_of(watcher, pid)) == 1
    finally:
        c.close()


def test_bytes_released_when_a_backend_ends_normally(watcher):
    c, pid = warmed_up(["efficientnet"])
    assert rows_of(watcher, pid)
    c.close()
    assert released(watcher, pid) == []


def test_bytes_released_when_a_backend_ends_with_fatal(watcher):
    c, pid = warmed_up(["efficientnet"])
    assert rows_of(watcher, pid)
    c.execute("SET idle_session_timeout = '200ms'")
    time.sleep(0.6)  # the server ends the idle session with FATAL 57P05
    try:
        assert released(watcher, pid) == []
    finally:
        c.close()


def test_bytes_released_when_a_backend_is_terminated(watcher):
    c, pid = warmed_up(["clip_fixture"])
    assert rows_of(watcher, pid)
    watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))
    try:
        assert released(watcher, pid) == []
    finally:
        c.close()


def test_unload_releases_that_models_shared_bytes(watcher):
    c, pid = warmed_up(["efficientnet", "clip_fixture"])
    try:
        n = c.execute("SELECT pg_vision_unload('clip_fixture')").fetchone()[0]
        assert n == 2  # both towers of clip_fixture
        assert [r[0] for r in rows_of(watcher, pid)] == ["efficientnet"]
    finally:
        c.close()


def test_batch_does_not_stay_resident(cluster, image):
    """The budget counts the model; the activations and decoded images of an
    embed_images() batch must go back to the system when the call ends (the ONNX Runtime
    arena shrinks after the last run, then malloc_trim)."""
    with photos.connect() as c:
        pid = backend_pid(c)
        c.execute(use_sql("efficientnet", "image"), (image,))
        after_one = anonymous_mb(pid)
        c.execute("SELECT embed_images('efficientnet', %s, 64)", ([photos.jpeg_1000()] * 64,))
        after_batch = anonymous_mb(pid)
    assert after_batch - after_one < 64, (f"a batch of 64 raised the backend's private memory from {after_one} MB "
                                          f"to {after_batch} MB (an arena kept about 640 MB more)")


# --- without shared_preload_libraries (restarts the server: keep these last) --------------------

@pytest.fixture(scope="module")
def per_connection(without_preload, image):
    """One session embedding with two models: the notices it got and its summary row."""
    with photos.connect() as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
        c.execute(use_sql("efficientnet", "image"), (image,))
        c.execute(use_sql("clip_fixture", "image"), (image,))
        return SimpleNamespace(warnings=[m for s, m in notices if s == "WARNING"], summary=summary(c))


def test_without_preload_one_warning_per_backend(per_connection):
    w = per_connection.warnings
    assert len(w) == 1 and "shared_preload_libraries" in w[0], w


def test_without_preload_the_budget_is_per_connection(per_connection):
    s = per_connection.summary
    assert not s[5] and s[2] == 1, f"cluster_wide {s[5]}, backends {s[2]}"
