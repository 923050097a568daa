"""Hostile use of asynchronous indexing (trigger mode=async) by an ordinary role, with the
real background workers: what one tenant does to its own tables and to the shared queue
must never give it the workers' superuser rights, another tenant's data or URLs of its
choosing, and must never stop the workers from indexing the other tenants' tables.

The cluster is restarted with pg_vision.indexer_databases = 'pg_vision' (2 workers), as in
test_async.py. The hostile role (conftest's pgv_hostile) owns a schema of its own; the
victim, pgv_victim, owns its own tables."""

import io
import time

import psycopg
import pytest

import photos
from helpers import HttpServer, indexer_workers, wait_for

VICTIM = "pgv_victim"
WORKERS = 2
SCHEMA = "hostile_async"


@pytest.fixture(scope="module")
def indexer(cluster, hostile_role):
    with indexer_workers(WORKERS):
        with photos.connect() as c:
            if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (VICTIM,)).fetchone():
                c.execute(f"CREATE ROLE {VICTIM} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
            for schema, role in ((SCHEMA, hostile_role), ("victim_async", VICTIM)):
                c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                c.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
            c.execute(f"GRANT USAGE ON SCHEMA victim_async TO {hostile_role}")
        yield
        with photos.connect() as c:
            c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            c.execute("DROP SCHEMA IF EXISTS victim_async CASCADE")


@pytest.fixture(scope="module")
def checked(indexer, health):
    """The module's tests, watched: no backend may crash, the postmaster never restart."""
    return health


def connect(role, schema):
    c = photos.connect(user=role)
    c.execute(f"SET search_path = {schema}, public")
    return c


@pytest.fixture
def hostile(indexer, hostile_role):
    with connect(hostile_role, SCHEMA) as c:
        yield c


@pytest.fixture
def victim(indexer):
    with connect(VICTIM, "victim_async") as c:
        yield c


@pytest.fixture(scope="module")
def jpeg():
    buf = io.BytesIO()
    photos.photo(photos.names()[0]).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ext_schema(indexer):
    with photos.connect() as c:
        return c.execute("""SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                             WHERE e.extname = 'pg_vision'""").fetchone()[0]


def async_table(conn, name, image_type="bytea", checksum=False):
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, image {image_type}, emb vector(1280)"
                 f"{', checksum text' if checksum else ''})")
    extra = ", 'checksum=checksum'" if checksum else ""
    conn.execute(f"""CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON {name} FOR EACH ROW
                     EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet'{extra}, 'mode=async')""")


def indexed(conn, table, timeout="30 s"):
    return conn.execute("SELECT pg_vision_wait_for_indexing(%s, %s)", (table, timeout)).fetchone()[0]


def test_an_operator_planted_in_public_never_runs_as_the_worker(checked, hostile, hostile_role, jpeg, ext_schema):
    """The worker connects as the bootstrap superuser. Its own statements (before it becomes
    the table owner) compared a queue row's regclass with an oid parameter: with search_path
    "$user", public, an operator =(regclass, oid) in a public schema open to all (any database
    created before PostgreSQL 15) was picked over pg_catalog's and ran as the superuser."""
    with photos.connect() as c:
        c.execute(f"GRANT CREATE ON SCHEMA public TO {hostile_role}")
    try:
        hostile.execute("CREATE TABLE seen (who name, super boolean)")
        hostile.execute("GRANT INSERT ON seen TO PUBLIC")
        hostile.execute(f"""CREATE FUNCTION public.pgv_planted_eq(regclass, oid) RETURNS boolean LANGUAGE plpgsql AS $$
                            BEGIN
                              BEGIN
                                INSERT INTO {SCHEMA}.seen SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
                                IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                                  EXECUTE 'ALTER ROLE {hostile_role} SUPERUSER';
                                END IF;
                              EXCEPTION WHEN OTHERS THEN NULL;
                              END;
                              RETURN $1::oid = $2;
                            END $$""")
        hostile.execute("CREATE OPERATOR public.= (LEFTARG = regclass, RIGHTARG = oid, FUNCTION = public.pgv_planted_eq)")
        async_table(hostile, "doomed")
        oid = hostile.execute("SELECT 'doomed'::regclass::oid").fetchone()[0]
        # Queued, then dropped in the same transaction: the worker finds a queue row whose
        # table is gone, and deletes its rows.
        with hostile.transaction():
            hostile.execute("INSERT INTO doomed (id, image) VALUES (1, %s)", (jpeg,))
            hostile.execute("DROP TABLE doomed")
        with photos.connect() as c:
            c.execute("SET search_path = pg_catalog")   # this test's own superuser queries too
            wait_for("the dropped table's queue rows deleted", lambda: c.execute(
                f"SELECT count(*) = 0 FROM {ext_schema}.pg_vision_queue WHERE relation::oid = %s::oid", (oid,)).fetchone()[0], timeout=30)
            assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (hostile_role,)).fetchone()[0] is False
            assert c.execute(f"SELECT count(*) FROM {SCHEMA}.seen WHERE super").fetchone()[0] == 0
    finally:
        with photos.connect() as c:
            c.execute("SET search_path = pg_catalog")
            c.execute(f"ALTER ROLE {hostile_role} NOSUPERUSER")
            c.execute("DROP OPERATOR IF EXISTS public.= (regclass, oid)")
            c.execute("DROP FUNCTION IF EXISTS public.pgv_planted_eq(regclass, oid)")
            c.execute(f"REVOKE CREATE ON SCHEMA public FROM {hostile_role}")


def test_poisoned_and_locked_tables_never_stall_the_other_tables(checked, hostile, hostile_role, victim, jpeg):
    """More broken tables than workers: queue rows whose key is not a row (the batch fails
    as a whole), tables held by LOCK TABLE, rows of a dropped table locked FOR UPDATE. The
    workers always picked the oldest due row, so they failed or gave up on these over and
    over and never reached the victim's table."""
    poisoned = [f"poison_{i}" for i in range(WORKERS + 1)]
    locked = [f"locked_{i}" for i in range(WORKERS + 1)]
    dropped = [f"dropped_{i}" for i in range(WORKERS + 1)]
    for t in poisoned + locked + dropped:
        async_table(hostile, t)
    hostile_oids = [hostile.execute("SELECT %s::regclass::oid", (t,)).fetchone()[0] for t in poisoned + locked + dropped]
    locker = photos.connect(user=hostile_role)
    try:
        with hostile.transaction():
            for t in poisoned:
                hostile.execute("INSERT INTO pg_vision_queue (relation, trigger_name, row_key) VALUES (%s, 'embed', '[1]')", (f"{SCHEMA}.{t}",))
        locker.execute("BEGIN")
        for t in locked:
            locker.execute(f"LOCK TABLE {SCHEMA}.{t} IN ACCESS EXCLUSIVE MODE")
        with hostile.transaction():
            for t in locked:
                hostile.execute("INSERT INTO pg_vision_queue (relation, trigger_name, row_key) VALUES (%s, 'embed', '{\"id\": 1}')", (f"{SCHEMA}.{t}",))
        dropped_oids = hostile_oids[-len(dropped):]
        for oid, t in zip(dropped_oids, dropped):
            with hostile.transaction():
                hostile.execute("INSERT INTO pg_vision_queue (relation, trigger_name, row_key) VALUES (%s, 'embed', '{\"id\": 1}'), (%s, 'embed', '{\"id\": 2}')",
                                (f"{SCHEMA}.{t}", f"{SCHEMA}.{t}"))
            # The newest of the two rows stays locked by the open transaction of `locker`.
            locker.execute("SELECT 1 FROM pg_vision_queue WHERE relation = %s::oid::regclass ORDER BY id DESC LIMIT 1 FOR UPDATE", (oid,))
            hostile.execute(f"DROP TABLE {t}")
        time.sleep(1.5)   # the workers find the broken tables first
        async_table(victim, "innocent")
        victim.execute("INSERT INTO innocent (id, image) SELECT g, %s FROM generate_series(1, 3) g", (jpeg,))
        assert indexed(victim, "innocent", "20 s"), "the other tables stalled the workers"
        assert victim.execute("SELECT count(emb) FROM innocent").fetchone()[0] == 3
        # A table whose batch fails is tried again later (backoff), saying why.
        with photos.connect() as c:
            rows = c.execute("""SELECT attempts, next_try > now(), last_error FROM pg_vision_queue
                                 WHERE relation = ANY (%s::regclass[])""", ([f"{SCHEMA}.{t}" for t in poisoned],)).fetchall()
            assert rows and all(a >= 1 and later and "the batch failed" in e for a, later, e in rows), rows
        locker.close()
        # Unlocked: the locked tables' rows are done (their key names no row), and so are
        # the dropped tables' rows.
        with photos.connect() as c:
            wait_for("the dropped and unlocked tables' queue rows done", lambda: c.execute(
                "SELECT count(*) = 0 FROM pg_vision_queue WHERE relation::oid = ANY (%s) OR relation = ANY (%s::regclass[])",
                (dropped_oids, [f"{SCHEMA}.{t}" for t in locked])).fetchone()[0], timeout=30)
    finally:
        locker.close()
        with photos.connect() as c:
            c.execute("DELETE FROM pg_vision_queue WHERE relation::oid = ANY (%s)", (hostile_oids,))


def test_owner_code_that_never_returns_cannot_hold_the_workers(checked, hostile, victim, jpeg, system_settings):
    """The owner's trigger runs inside the batch: one that sleeps for ever, or that catches the
    cancel and sleeps again, held its worker for ever (a background worker has no
    statement_timeout), and as many such tables as workers stopped indexing for every role."""
    system_settings.set("pg_vision.indexer_batch_timeout", "1000")
    hostile.execute("""CREATE FUNCTION sleeps() RETURNS trigger LANGUAGE plpgsql AS $$
                       BEGIN PERFORM pg_sleep(3600); RETURN NEW; END $$""")
    hostile.execute("""CREATE FUNCTION sleeps_through_cancels() RETURNS trigger LANGUAGE plpgsql AS $$
                       BEGIN
                         LOOP
                           BEGIN
                             PERFORM pg_sleep(3600);
                           EXCEPTION WHEN query_canceled THEN NULL;
                           END;
                         END LOOP;
                       END $$""")
    tables = {f"asleep_{i}": "sleeps" for i in range(WORKERS)} | {f"stubborn_{i}": "sleeps_through_cancels" for i in range(WORKERS)}
    oids = []
    try:
        for t, f in tables.items():
            async_table(hostile, t)
            hostile.execute(f"CREATE TRIGGER hold BEFORE UPDATE OF emb ON {t} FOR EACH ROW EXECUTE FUNCTION {f}()")
            oids.append(hostile.execute("SELECT %s::regclass::oid", (t,)).fetchone()[0])
            hostile.execute(f"INSERT INTO {t} (id, image) VALUES (1, %s)", (jpeg,))
        time.sleep(0.5)   # the workers take the hostile tables first
        async_table(victim, "patient")
        victim.execute("INSERT INTO patient (id, image) SELECT g, %s FROM generate_series(1, 3) g", (jpeg,))
        assert indexed(victim, "patient", "30 s"), "the hostile tables held the workers"
        with photos.connect() as c:
            # The polite ones were cancelled and postponed, saying why.
            rows = c.execute("SELECT last_error FROM pg_vision_queue WHERE relation = ANY (%s::regclass[])",
                             ([f"{SCHEMA}.{t}" for t, f in tables.items() if f == "sleeps"],)).fetchall()
            assert rows and all("statement timeout" in e for (e,) in rows), rows
            wait_for("the workers back", lambda: c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_vision indexer'").fetchone()[0] == WORKERS, timeout=30)
    finally:
        with photos.connect() as c:
            # Workers still held (without the timeout) would keep the queue rows and the
            # tables locked: ended first (they restart 5 s later).
            held = [p for (p,) in c.execute("""SELECT pid FROM pg_stat_activity
                                                WHERE backend_type = 'pg_vision indexer' AND wait_event = 'PgSleep'""")]
            for pid in held:
                c.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            c.execute("DELETE FROM pg_vision_queue WHERE relation::oid = ANY (%s)", (oids,))
            for t in tables:
                c.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{t}")


def test_the_workers_listings_show_only_tables_the_role_may_see(checked, hostile, victim, jpeg):
    """pg_vision_indexer_batches() and pg_vision_indexer_workers() read shared memory: they
    showed every role which tables the workers indexed, when, and how many rows, though the
    queue and pg_vision_indexing (row-level security) show a role only its own tables."""
    async_table(victim, "private")
    victim.execute("INSERT INTO private (id, image) SELECT g, %s FROM generate_series(1, 2) g", (jpeg,))
    assert indexed(victim, "private")
    oid = victim.execute("SELECT 'private'::regclass::oid").fetchone()[0]
    assert victim.execute("SELECT count(*) FROM pg_vision_indexer_batches() WHERE relation = %s", (oid,)).fetchone()[0] >= 1
    assert hostile.execute("SELECT count(*) FROM pg_vision_indexer_batches() WHERE relation = %s", (oid,)).fetchone()[0] == 0
    assert hostile.execute("SELECT count(*) FROM pg_vision_indexer_workers() WHERE relation = %s", (oid,)).fetchone()[0] == 0
    assert hostile.execute("SELECT count(*) FROM pg_vision_indexer_workers()").fetchone()[0] == WORKERS
    assert hostile.execute("SELECT count(*) FROM pg_vision_indexing WHERE relation = %s::oid::regclass", (oid,)).fetchone()[0] == 0
    with photos.connect() as c:
        assert c.execute("SELECT count(*) FROM pg_vision_indexer_batches() WHERE relation = %s", (oid,)).fetchone()[0] >= 1


def test_a_column_privilege_on_the_image_is_enough_to_change_it(checked, hostile, hostile_role, victim, jpeg):
    """Not an attack: a role granted UPDATE (image) could not update an image of an
    async-indexed table (its queue row failed the queue's row-level security, which asked
    for UPDATE on the whole table)."""
    async_table(victim, "column_grant")
    victim.execute("INSERT INTO column_grant (id, image) VALUES (1, '\\x00')")
    victim.execute(f"GRANT SELECT (id), UPDATE (image) ON column_grant TO {hostile_role}")
    hostile.execute("UPDATE victim_async.column_grant SET image = %s WHERE id = 1", (jpeg,))
    assert indexed(victim, "column_grant")
    assert victim.execute("SELECT emb IS NOT NULL FROM column_grant").fetchone()[0]


@pytest.fixture
def server(jpeg, system_settings):
    # An image, a 404, and a file that is not for the database's users.
    s = HttpServer({"/ok.jpg": (200, jpeg), "/internal.txt": (200, b"internal: not for the database's users")})
    system_settings.set("pg_vision.url_allowlist", f"127.0.0.1:{s.port}")
    system_settings.set("pg_vision.url_timeout", "2000")
    yield s
    s.close()


def test_owner_code_inside_a_batch_cannot_fetch_urls(checked, hostile, server, ext_schema):
    """A batch runs in the worker, the only process pg_vision_fetch_image serves; the table
    owner's triggers run inside it. They could call pg_vision_fetch_image themselves, on any
    URL the allowlist lets through, and keep what came back (not an embedding: the bytes)."""
    hostile.execute("CREATE TABLE loot (call text, body bytea, sqlstate text)")
    hostile.execute(f"""CREATE FUNCTION grab() RETURNS trigger LANGUAGE plpgsql AS $$
                        DECLARE
                          call text;
                          got bytea;
                        BEGIN
                          FOREACH call IN ARRAY ARRAY['{ext_schema}.pg_vision_fetch_image($1)',
                                                      '{ext_schema}.pg_vision_fetch_image($1, 0)',
                                                      '{ext_schema}.pg_vision_fetch_image($1, 1)',
                                                      '{ext_schema}.pg_vision_fetch_image($1, -1)'] LOOP
                            BEGIN
                              EXECUTE 'SELECT ' || call INTO got USING '{server.url("/internal.txt")}'::text;
                              INSERT INTO {SCHEMA}.loot VALUES (call, got, NULL);
                            EXCEPTION WHEN OTHERS THEN
                              INSERT INTO {SCHEMA}.loot VALUES (call, NULL, SQLSTATE);
                            END;
                          END LOOP;
                          RETURN NEW;
                        END $$""")
    async_table(hostile, "by_url", image_type="text")
    hostile.execute("CREATE TRIGGER grab BEFORE UPDATE OF emb ON by_url FOR EACH ROW EXECUTE FUNCTION grab()")
    hostile.execute("INSERT INTO by_url (id, image) VALUES (1, %s)", (server.url("/ok.jpg"),))
    assert indexed(hostile, "by_url")
    # The batch itself fetched and embedded the image...
    assert hostile.execute("SELECT emb IS NOT NULL FROM by_url").fetchone()[0]
    assert server.hits.get("/ok.jpg") == 1
    # ... and the owner's trigger, which ran inside it, fetched nothing.
    calls = hostile.execute("SELECT call, body IS NOT NULL, sqlstate FROM loot").fetchall()
    assert len(calls) == 4
    assert not [c for c in calls if c[1]], calls
    assert "/internal.txt" not in server.hits


def test_queue_and_error_ids_cannot_be_taken_ahead_of_the_sequence(checked, hostile, victim, jpeg):
    """Queue and error rows get their id from a sequence; a role that chose ids ahead of it
    (its own table's rows, next_try = infinity so they stay) made every other role's next
    queued row, or recorded failure, fail on the primary key: their INSERTs failed."""
    async_table(hostile, "mine")

    def attempt(query, params=()):
        try:
            with hostile.transaction():
                hostile.execute(query, params)
            return None
        except psycopg.Error as e:
            return e.sqlstate

    try:
        n = hostile.execute("SELECT nextval('pg_vision_queue_id_seq')").fetchone()[0]
        e = hostile.execute("SELECT nextval('pg_vision_errors_id_seq')").fetchone()[0]
        refused = [
            attempt("""INSERT INTO pg_vision_queue (id, relation, trigger_name, row_key, next_try)
                       SELECT g, 'mine', 'embed', '{"id": -1}', 'infinity' FROM generate_series(%s::bigint, %s::bigint) g""",
                    (n + 1, n + 200)),
            attempt("""INSERT INTO pg_vision_errors (id, relation, row_identity, image_column, model, sqlstate, message, at)
                       SELECT g, 'mine', '{}', 'image', 'm', '22000', 'x', now() FROM generate_series(%s::bigint, %s::bigint) g""",
                    (e + 1, e + 200)),
            attempt("INSERT INTO pg_vision_queue (relation, trigger_name, row_key, next_try) VALUES ('mine', 'embed', '{}', 'infinity')"),
            attempt("UPDATE pg_vision_queue SET id = id + 1000000 WHERE relation = 'mine'::regclass"),
        ]
        # The victim's writes: a queued row, and a failure recorded by a sync trigger.
        async_table(victim, "queued")
        victim.execute("INSERT INTO queued (id, image) VALUES (1, %s)", (jpeg,))
        victim.execute("DROP TABLE IF EXISTS recorded")
        victim.execute("CREATE TABLE recorded (id int PRIMARY KEY, image bytea, emb vector(1280))")
        victim.execute("""CREATE TRIGGER embed BEFORE INSERT ON recorded FOR EACH ROW
                          EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'on_error=null')""")
        victim.execute("INSERT INTO recorded (id, image) VALUES (1, '\\xdeadbeef')")
        assert victim.execute("SELECT count(*) FROM pg_vision_errors WHERE relation = 'recorded'::regclass").fetchone()[0] == 1
        assert indexed(victim, "queued")
        assert refused == ["42501"] * 4
        # What the trigger and the error recorder write is still allowed.
        assert attempt("INSERT INTO pg_vision_queue (relation, trigger_name, row_key) VALUES ('mine', 'embed', '{\"id\": -1}')") is None
        assert attempt("""INSERT INTO pg_vision_errors (relation, row_identity, image_column, model, sqlstate, message)
                          VALUES ('mine', '{}', 'image', 'm', '22000', 'x')""") is None
        assert attempt("UPDATE pg_vision_queue SET next_try = now() WHERE relation = 'mine'::regclass") is None
    finally:
        with photos.connect() as c:
            c.execute("DELETE FROM pg_vision_queue WHERE relation = %s::regclass", (f"{SCHEMA}.mine",))
            c.execute("DELETE FROM pg_vision_errors WHERE relation = %s::regclass", (f"{SCHEMA}.mine",))


def test_a_forged_key_never_writes_the_checksum(checked, hostile, hostile_role, victim, server):
    """A queue row's key may carry more than the primary key. A role that may only INSERT
    into a table could queue a key with a checksum of its choosing for an existing row:
    when the row's URL failed for good, the batch wrote the checksum from the key."""
    async_table(victim, "catalogue", image_type="text", checksum=True)
    victim.execute(f"GRANT INSERT ON catalogue TO {hostile_role}")
    victim.execute("INSERT INTO catalogue (id, image) VALUES (1, %s)", (server.url("/gone.jpg"),))
    assert indexed(victim, "catalogue")
    hostile.execute("""INSERT INTO pg_vision_queue (relation, trigger_name, row_key)
                       VALUES ('victim_async.catalogue', 'embed', '{"id": 1, "checksum": "forged by the hostile role"}')""")
    assert indexed(victim, "catalogue")
    assert server.hits["/gone.jpg"] == 2
    assert victim.execute("SELECT checksum FROM catalogue WHERE id = 1").fetchone()[0] is None
