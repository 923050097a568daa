"""Asynchronous indexing with the real background workers (trigger mode=async).

The cluster is restarted with pg_vision.indexer_databases = 'pg_vision' (2 workers) for
this module. Tables belong to an ordinary role (pgv_owner); the application role (pgv_app)
writes them; the workers write the embeddings as the owner. The queue's own rules, without
workers, are in pg_regress (pgrx-tests/pg_regress/sql/async.sql)."""

import io
import os
import threading
import time

import psycopg
import pytest
from PIL import Image, ImageOps

import photos
from helpers import HttpServer, indexer_workers, wait_for, workers_running

OWNER = "pgv_owner"
WORKERS = 2


def server_accepts():
    try:
        with photos.connect():
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="module")
def indexer(cluster, app_role):
    with indexer_workers(WORKERS):
        with photos.connect() as c:
            if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OWNER,)).fetchone():
                c.execute(f"CREATE ROLE {OWNER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
            c.execute("DROP SCHEMA IF EXISTS async_test CASCADE")
            c.execute(f"CREATE SCHEMA async_test AUTHORIZATION {OWNER}")
            c.execute(f"GRANT USAGE ON SCHEMA async_test TO {app_role}")
        yield
        with photos.connect() as c:
            c.execute("DROP SCHEMA IF EXISTS async_test CASCADE")


@pytest.fixture(scope="module")
def owner(indexer):
    with photos.connect(user=OWNER) as c:
        c.execute("SET search_path = async_test, public")
        yield c


@pytest.fixture(scope="module")
def writer(indexer, app_role):
    with photos.connect(user=app_role) as c:
        c.execute("SET search_path = async_test, public")
        yield c


def jpeg(name, mirror=False):
    img = photos.photo(name).convert("RGB")
    if mirror:
        img = ImageOps.mirror(img)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images():
    names = photos.names()[:6]
    return [jpeg(n) for n in names] + [jpeg(n, mirror=True) for n in names]


def make_table(owner, app_role, name, partitioned=False):
    owner.execute(f"DROP TABLE IF EXISTS {name}")
    if partitioned:
        owner.execute(f"""CREATE TABLE {name} (id bigint PRIMARY KEY, image bytea, checksum text,
                          emb vector(1280), written_by name) PARTITION BY HASH (id)""")
        for r in range(3):
            owner.execute(f"CREATE TABLE {name}_{r} PARTITION OF {name} FOR VALUES WITH (MODULUS 3, REMAINDER {r})")
    else:
        owner.execute(f"""CREATE TABLE {name} (id bigint PRIMARY KEY, image bytea, checksum text,
                          emb vector(1280), written_by name)""")
    owner.execute(f"""CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON {name} FOR EACH ROW
                      EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'checksum=checksum', 'mode=async')""")
    owner.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO {app_role}")


def reference(images):
    with photos.connect() as c:
        return [c.execute("SELECT embed_efficientnet(%s)::text", (img,)).fetchone()[0] for img in images]


def wrong_rows(conn, table):
    """Rows whose embedding or checksum does not belong to their current image."""
    return conn.execute(f"""SELECT id FROM {table}
                             WHERE image IS NOT NULL
                               AND (emb IS NULL OR checksum IS DISTINCT FROM image_checksum(image)
                                    OR 1 - (emb <=> embed_efficientnet(image)) < 0.9999)""").fetchall()


def test_insert_returns_at_once_and_the_vector_follows_within_a_second(owner, writer, app_role, images):
    make_table(owner, app_role, "items")
    for i, img in enumerate(images[:4]):
        t0 = time.monotonic()
        writer.execute("INSERT INTO items (id, image) VALUES (%s, %s)", (i, img))
        committed = time.monotonic()
        row = writer.execute("SELECT emb IS NULL FROM items WHERE id = %s", (i,)).fetchone()
        assert row[0], "the INSERT itself must not embed"
        wait_for("the vector", lambda: writer.execute("SELECT emb IS NOT NULL FROM items WHERE id = %s", (i,)).fetchone()[0],
                 timeout=5, every=0.01)
        visible = time.monotonic() - committed
        assert visible < 1.0, f"the vector appeared {visible:.2f} s after the commit"
        assert committed - t0 < 0.5
    assert wrong_rows(writer, "items") == []


def test_workers_write_as_the_owner_and_cannot_take_more(owner, writer, app_role, images):
    make_table(owner, app_role, "owned")
    # The owner's own trigger runs when the worker writes: it sees the owner as current_user
    # and cannot become the superuser the worker connected as.
    owner.execute("""CREATE FUNCTION who() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                       BEGIN
                         RESET ROLE;
                         NEW.written_by := 'escaped:' || current_user;
                       EXCEPTION WHEN OTHERS THEN
                         NEW.written_by := current_user;
                       END;
                       RETURN NEW;
                     END $$""")
    owner.execute("CREATE TRIGGER who BEFORE UPDATE OF emb ON owned FOR EACH ROW EXECUTE FUNCTION who()")
    writer.execute("INSERT INTO owned (id, image) VALUES (1, %s)", (images[0],))
    assert writer.execute("SELECT pg_vision_wait_for_indexing('owned', '30 s')").fetchone()[0]
    assert writer.execute("SELECT written_by FROM owned").fetchone()[0] == OWNER


def test_a_row_changed_while_queued_is_never_left_with_a_stale_vector(owner, writer, app_role, images):
    make_table(owner, app_role, "churn")
    rows = 24
    writer.execute("INSERT INTO churn (id, image) SELECT g, %s FROM generate_series(1, %s) g", (images[0], rows))
    # Update every row's image over and over while the workers embed: each write is
    # checked against the image it was computed from.
    for round_ in range(1, 8):
        with writer.transaction():
            for r in range(1, rows + 1):
                writer.execute("UPDATE churn SET image = %s WHERE id = %s",
                               (images[(r + round_) % len(images)], r))
        time.sleep(0.05)
    assert writer.execute("SELECT pg_vision_wait_for_indexing('churn', '60 s')").fetchone()[0]
    assert wrong_rows(writer, "churn") == []


def test_partitioned_table_and_copy(owner, writer, app_role, images):
    make_table(owner, app_role, "parts", partitioned=True)
    with writer.cursor().copy("COPY parts (id, image) FROM STDIN") as copy:
        for i in range(30):
            copy.write_row((i, images[i % len(images)]))
    assert writer.execute("SELECT pg_vision_wait_for_indexing('parts', '60 s')").fetchone()[0]
    assert writer.execute("SELECT count(*) FROM parts WHERE emb IS NOT NULL").fetchone()[0] == 30
    assert wrong_rows(writer, "parts") == []


def test_status_view_and_workers(owner, writer, app_role, images):
    make_table(owner, app_role, "status")
    writer.execute("INSERT INTO status (id, image) SELECT g, %s FROM generate_series(1, 60) g", (images[1],))
    seen = writer.execute("SELECT queued, oldest IS NOT NULL FROM pg_vision_indexing WHERE relation = 'status'::regclass").fetchone()
    assert seen is not None and seen[0] > 0 and seen[1]
    assert writer.execute("SELECT pg_vision_wait_for_indexing('status', '60 s')").fetchone()[0]
    queued, rate, workers = writer.execute(
        "SELECT queued, rows_per_s, workers FROM pg_vision_indexing WHERE relation = 'status'::regclass").fetchone()
    assert queued == 0 and rate > 0
    states = writer.execute("SELECT database, state, batches FROM pg_vision_indexer_workers() ORDER BY pid").fetchall()
    assert len(states) == WORKERS
    assert all(db == "pg_vision" and state in ("idle", "embedding") for db, state, _ in states)
    assert sum(b for _, _, b in states) > 0
    # The workers' models count in the memory budget.
    with photos.connect() as c:
        held = c.execute("""SELECT count(*) FROM pg_vision_memory m JOIN pg_stat_activity a USING (pid)
                             WHERE a.backend_type = 'pg_vision indexer'""").fetchone()[0]
    assert held >= 1


def test_bad_image_is_recorded_once_and_not_retried(owner, writer, app_role, images):
    make_table(owner, app_role, "bad")
    writer.execute("INSERT INTO bad (id, image) VALUES (1, '\\xdeadbeef'), (2, %s)", (images[2],))
    assert writer.execute("SELECT pg_vision_wait_for_indexing('bad', '30 s')").fetchone()[0]
    assert writer.execute("SELECT id FROM bad WHERE emb IS NOT NULL").fetchall() == [(2,)]
    errors = owner.execute("SELECT row_identity, sqlstate FROM pg_vision_errors WHERE relation = 'bad'::regclass").fetchall()
    assert errors == [({"id": 1}, "22P03")]


def test_passing_failures_are_retried_with_backoff_then_given_up(owner, writer, app_role, images, module_settings):
    make_table(owner, app_role, "retry")
    # A budget too small for the model: a failure that may pass (SQLSTATE 53200).
    with photos.connect() as c:
        c.execute("SELECT pg_vision_release_models(pid) FROM pg_stat_activity WHERE backend_type = 'pg_vision indexer'")
    module_settings.set("pg_vision.memory_budget", "1")
    module_settings.set("pg_vision.indexer_max_attempts", "2")
    writer.execute("INSERT INTO retry (id, image) VALUES (1, %s)", (images[3],))
    first = wait_for("a failed attempt", lambda: writer.execute(
        "SELECT attempts, next_try > now(), last_error FROM pg_vision_queue WHERE relation = 'retry'::regclass AND attempts > 0"
    ).fetchone(), timeout=10)
    assert first[0] == 1 and first[1] and first[2].startswith("53200")
    # Tried again about 2 s later, then given up (max_attempts = 2) and recorded.
    assert writer.execute("SELECT pg_vision_wait_for_indexing('retry', '20 s')").fetchone()[0]
    message = owner.execute("SELECT message FROM pg_vision_errors WHERE relation = 'retry'::regclass").fetchone()[0]
    assert message.startswith("gave up after 2 tries")
    module_settings.reset("pg_vision.memory_budget")
    module_settings.reset("pg_vision.indexer_max_attempts")
    # Fixed: the same row, queued again by an UPDATE, is embedded.
    writer.execute("UPDATE retry SET image = %s WHERE id = 1", (images[4],))
    assert writer.execute("SELECT pg_vision_wait_for_indexing('retry', '30 s')").fetchone()[0]
    assert wrong_rows(writer, "retry") == []


@pytest.mark.parametrize("how", ["DROP TABLE", "TRUNCATE"])
def test_drop_or_truncate_of_a_queued_table(owner, writer, app_role, images, how):
    make_table(owner, app_role, "gone")
    oid = owner.execute("SELECT 'gone'::regclass::oid").fetchone()[0]
    writer.execute("INSERT INTO gone (id, image) SELECT g, %s FROM generate_series(1, 200) g", (images[5],))
    owner.execute(f"{how} gone")
    with photos.connect() as c:
        wait_for("the queue emptied", lambda: c.execute("SELECT count(*) = 0 FROM pg_vision_queue WHERE relation = %s", (oid,)).fetchone()[0],
                 timeout=30)
        assert c.execute("SELECT count(*) FROM pg_vision_indexer_workers() WHERE state = 'failing'").fetchone()[0] == 0


def image_server(image):
    """The URL tests' server: an image, a redirect to it, a 404, a 503, one over the size
    limit, one slower than the timeout, a redirect to a host off the allowlist."""

    def slow(h):
        time.sleep(3)
        h.reply(200, image)

    def to_elsewhere(h):
        # localhost is not on the allowlist (only 127.0.0.1:port is).
        h.reply(302, b"", [("Location", f"http://localhost:{h.server.server_address[1]}/elsewhere.jpg")])

    return HttpServer({
        "/ok.jpg": (200, image),
        "/to-ok.jpg": (301, b"", [("Location", "/ok.jpg")]),
        "/missing.jpg": (404, b"not found"),
        "/busy.jpg": (503, b"try later"),
        "/big.jpg": (200, b"\xff" * (300 * 1024)),
        "/slow.jpg": slow,
        "/to-elsewhere.jpg": to_elsewhere,
    })


def test_image_urls_fetched_by_the_workers_only_from_the_allowlist(owner, writer, app_role, images, system_settings):
    server = image_server(images[0])
    try:
        system_settings.set("pg_vision.url_allowlist", f"127.0.0.1:{server.port}")
        system_settings.set("pg_vision.url_timeout", "1000")
        system_settings.set("pg_vision.max_image_bytes", str(200 * 1024))  # /big.jpg is 300 kB
        system_settings.set("pg_vision.indexer_max_attempts", "2")
        owner.execute("DROP TABLE IF EXISTS by_url")
        owner.execute("CREATE TABLE by_url (id int PRIMARY KEY, url text, checksum text, emb vector(1280))")
        owner.execute("""CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF url ON by_url FOR EACH ROW
                         EXECUTE FUNCTION pg_vision_embed_trigger('url', 'emb:efficientnet', 'checksum=checksum', 'mode=async')""")
        owner.execute(f"GRANT SELECT, INSERT, UPDATE ON by_url TO {app_role}")
        cases = ["/ok.jpg", "/to-ok.jpg", "/missing.jpg", "/busy.jpg", "/big.jpg", "/slow.jpg", "/to-elsewhere.jpg"]
        t0 = time.monotonic()
        for i, path in enumerate(cases):
            writer.execute("INSERT INTO by_url (id, url) VALUES (%s, %s)", (i, server.url(path)))
        writer.execute("INSERT INTO by_url (id, url) VALUES (99, 'http://169.254.169.254/latest/meta-data/')")
        # The INSERTs fetched nothing: only the workers do, after the commit.
        assert time.monotonic() - t0 < 1.0
        assert writer.execute("SELECT pg_vision_wait_for_indexing('by_url', '60 s')").fetchone()[0]
        ok = reference([images[0]])[0]
        got = dict(writer.execute("SELECT id, 1 - (emb <=> %s::vector) FROM by_url WHERE emb IS NOT NULL", (ok,)).fetchall())
        assert set(got) == {0, 1} and min(got.values()) > 0.9999
        checksum = writer.execute("SELECT encode(sha256(%s), 'hex')", (images[0],)).fetchone()[0]
        assert writer.execute("SELECT checksum FROM by_url WHERE id = 0").fetchone()[0] == checksum
        errors = dict(owner.execute("""SELECT (row_identity->>'id')::int, sqlstate || ' ' || message
                                         FROM pg_vision_errors WHERE relation = 'by_url'::regclass""").fetchall())
        assert errors[2].startswith("22000") and "404" in errors[2]      # lasting: recorded at once
        assert server.hits["/missing.jpg"] == 1
        assert errors[3].startswith("58030") and "gave up after 2 tries" in errors[3]   # passing: retried
        assert server.hits["/busy.jpg"] == 2
        assert errors[4].startswith("54000")                              # over max_image_bytes
        assert errors[5].startswith("58030") and "gave up after 2 tries" in errors[5]   # timeout
        assert errors[6].startswith("22023") and "allowlist" in errors[6]               # redirect re-checked
        assert "/elsewhere.jpg" not in server.hits
        assert errors[99].startswith("22023")                             # metadata service: not allowed
    finally:
        server.close()


def test_a_malformed_url_allowlist_is_refused_where_it_is_set(indexer, system_settings):
    """A malformed pg_vision.url_allowlist fails ALTER SYSTEM at once (22023, the entry and what
    is wrong in the detail, a hint), and a postgresql.conf holding one, reloaded, keeps the last
    good value: checked by the setting's check hook, in the postmaster too, which stays up (the
    health fixture); URL fetches never see a malformed list."""
    system_settings.set("pg_vision.url_allowlist", "images.example.com")
    with photos.connect() as c:
        for bad, entry in [("images.example.com, https://cdn.example.com", "https://cdn.example.com"),
                           ("a.com,,b.com", ""), ("*.com", "*.com"), ("cdn.example.com:99999", "99999")]:
            with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
                c.execute(f"ALTER SYSTEM SET pg_vision.url_allowlist = '{bad}'")
            assert "invalid URL allowlist entry" in e.value.diag.message_detail and entry in e.value.diag.message_detail
            assert e.value.diag.message_hint
        assert c.execute("SHOW pg_vision.url_allowlist").fetchone()[0] == "images.example.com"
        # The value ALTER SYSTEM wrote, replaced by hand, as an edit of a configuration file would.
        conf = os.path.join(c.execute("SHOW data_directory").fetchone()[0], "postgresql.auto.conf")
        log = os.path.join(photos.state_dir(), "postgres.log")
        with open(conf) as f:
            original = f.read()
        assert "pg_vision.url_allowlist = 'images.example.com'" in original
        log_at = os.path.getsize(log)
        try:
            with open(conf, "w") as f:
                f.write(original.replace("'images.example.com'", "'http://images.example.com'"))
            c.execute("SELECT pg_reload_conf()")
            wait_for("the reload's complaint", lambda: "pg_vision.url_allowlist" in open(log).read()[log_at:])
            with photos.connect() as fresh:
                assert fresh.execute("SHOW pg_vision.url_allowlist").fetchone()[0] == "images.example.com"
            with open(log) as f:
                complaint = f.read()[log_at:]
            assert 'invalid value for parameter "pg_vision.url_allowlist"' in complaint, complaint
        finally:
            with open(conf, "w") as f:
                f.write(original)
            c.execute("SELECT pg_reload_conf()")


def test_crash_safety_under_kill_9(owner, writer, app_role, images):
    """kill -9 of a worker mid-import, 20 times: PostgreSQL restarts every backend each time;
    afterwards every committed row has the vector of its current image, and nothing queued
    was lost. Runs last in this module (the cluster restarts)."""
    make_table(owner, app_role, "crash")
    stop = threading.Event()
    committed = set()

    def importer():
        next_id = 1
        while not stop.is_set():
            batch = list(range(next_id, next_id + 8))
            try:
                with photos.connect(user=app_role) as c:
                    c.execute("SET search_path = async_test, public")
                    with c.transaction():
                        for i in batch:
                            c.execute("INSERT INTO crash (id, image) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET image = excluded.image",
                                      (i, images[i % len(images)]))
                committed.update(batch)
                next_id += 8
            except psycopg.OperationalError:
                time.sleep(0.2)  # the cluster is restarting; the batch is retried

    t = threading.Thread(target=importer)
    t.start()
    kills = 0
    try:
        while kills < 20:
            try:
                with photos.connect() as c:
                    pids = [p for (p,) in c.execute(
                        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_vision indexer' AND wait_event IS NULL")]
            except psycopg.OperationalError:
                time.sleep(0.2)
                continue
            if not pids:
                time.sleep(0.05)
                continue
            os.kill(pids[0], 9)
            kills += 1
            time.sleep(0.5)
    finally:
        stop.set()
        t.join()
    # The last kill may have left the server in crash recovery for a while yet.
    wait_for("the server back from crash recovery", server_accepts, timeout=60, every=0.2)
    with photos.connect() as c:
        wait_for("the indexer workers", lambda: workers_running(c) == WORKERS, timeout=60)
        c.execute("SET search_path = async_test, public")
        assert c.execute("SELECT pg_vision_wait_for_indexing('crash', '120 s')").fetchone()[0]
        rows, vectors = c.execute("SELECT count(*), count(emb) FROM crash").fetchone()
        present = {i for (i,) in c.execute("SELECT id FROM crash")}
        assert committed - present == set(), f"committed rows lost: {sorted(committed - present)[:20]}"
        assert c.execute("SELECT count(*) FROM pg_vision_errors WHERE relation = 'crash'::regclass").fetchone()[0] == 0
        assert rows == len(committed) >= 40
        assert vectors == rows
        assert wrong_rows(c, "crash") == []
