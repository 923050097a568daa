"""Two tenants share a cluster (issue 10). The superuser only creates the database and the
extension; each tenant is an ordinary LOGIN role that owns its tables, inserts, runs the
backfill and reads its error records. Checked: the failure policy and the backfill work
for them, each sees only its own error and progress rows and cannot forge or delete the
other's, functions planted in `public` by one tenant are never called by the other's
trigger or backfill, the backfill stays right under concurrent deletes and inserts, and
the functions that show other sessions need a grant, and one tenant's idle sessions keep
the other out of the memory budget for no longer than pg_vision.model_idle_timeout.

Each scenario gets a database of its own (`pgv_tenants_*`). The hijack scenario also runs
on the released 0.3.0 install script, where it must succeed: that proves the test can
see a hijack."""

import os
import shutil
import subprocess
import threading
import time

import psycopg
import pytest

import photos
from helpers import sqlstate

pytestmark = pytest.mark.usefixtures("health")


@pytest.fixture(scope="module", autouse=True)
def private_copies(module_settings):
    """These tests size budgets from models loaded the plain way, each backend holding its
    own copy (pg_vision.shared_weights off); test_shared_weights.py tests the accounting of
    shared weights, counted once for the cluster."""
    module_settings.set("pg_vision.shared_weights", "off")


TENANTS = ("pgv_tenant_a", "pgv_tenant_b")
MONITOR = "pgv_monitor"
IMAGES = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")


def connect(db, user="postgres"):
    return photos.connect(user=user, dbname=db)


def fails_with(conn, query, params=()):
    """The SQLSTATE a statement fails with, or "ok"."""
    return sqlstate(conn, query, params)[0]


@pytest.fixture(scope="module")
def roles(superuser):
    for r in TENANTS + (MONITOR,):
        if superuser.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchone():
            for (db,) in superuser.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgv_tenants_%'").fetchall():
                superuser.execute(f"DROP DATABASE {db} WITH (FORCE)")
            superuser.execute(f"DROP OWNED BY {r}")
            superuser.execute(f"DROP ROLE {r}")
        superuser.execute(f"CREATE ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    superuser.execute(f"GRANT pg_monitor, pg_signal_backend TO {MONITOR}")
    return TENANTS


def extdir():
    share = subprocess.run(["bash", "-c", '. scripts/env.sh; "$PG_CONFIG" --sharedir'], cwd=photos.REPO,
                           check=True, capture_output=True, text=True).stdout.strip()
    return os.path.join(share, "extension")


def database(superuser, name, version=None):
    """A new database with pg_vision (at `version`, from the released script kept in
    pgrx-tests/upgrade/), where both tenants may create in `public`, as on a cluster
    upgraded from PostgreSQL 14 or configured carelessly."""
    db = f"pgv_tenants_{name}"
    superuser.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    superuser.execute(f"CREATE DATABASE {db}")
    if version:
        released = os.path.join(photos.REPO, "pgrx-tests", "upgrade", f"pg_vision--{version}.sql")
        shutil.copy(released, os.path.join(extdir(), f"pg_vision--{version}.sql"))
    with connect(db) as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION vector")
        c.execute("CREATE EXTENSION pg_vision" + (f" VERSION '{version}'" if version else ""))
        c.execute(f"GRANT CREATE ON SCHEMA public TO {', '.join(TENANTS)}")
    return db


@pytest.fixture(scope="module")
def expected(superuser):
    """The right vector of each test image, by checksum, computed by the superuser."""
    out = {}
    for n in IMAGES:
        checksum, vec = superuser.execute("SELECT image_checksum(%s), embed_efficientnet(%s)::text",
                                          (photos.shipped(n), photos.shipped(n))).fetchone()
        out[checksum] = vec
    return out


def shop_table(conn, name, on_error="null"):
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, image bytea, emb vector(1280), checksum text)")
    conn.execute(f"""CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON {name} FOR EACH ROW
                     EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'checksum=checksum',
                                                              'on_error={on_error}')""")


# --- error records ---------------------------------------------------------------------------

def test_error_rows_are_written_by_tenants_and_isolated(superuser, roles):
    db = database(superuser, "errors")
    a, b = (connect(db, r) for r in roles)
    for conn, table in ((a, "shop_a"), (b, "shop_b")):
        shop_table(conn, table)
        conn.execute("SET client_min_messages = error")
        # on_error=null: a bad upload keeps its row (it used to fail with 42501 on pg_vision_errors)
        conn.execute(f"INSERT INTO {table} (id, image) VALUES (1, %s), (2, '\\xdeadbeef')", (photos.shipped("chelsea.png"),))
        assert conn.execute(f"SELECT count(*), count(emb) FROM {table}").fetchone() == (2, 1)
    # each tenant sees only the rows of its own relations
    assert a.execute("SELECT relation::text, row_identity::text FROM pg_vision_errors").fetchall() == [("shop_a", '{"id": 2}')]
    assert b.execute("SELECT relation::text, row_identity::text FROM pg_vision_errors").fetchall() == [("shop_b", '{"id": 2}')]
    # SELECT on a table does not grant its error rows
    a.execute(f"GRANT SELECT, INSERT ON shop_a TO {roles[1]}")
    assert b.execute("SELECT count(*) FROM pg_vision_errors WHERE relation = 'shop_a'::regclass").fetchone() == (0,)
    # no forging: neither a row for a relation B cannot write, nor one with a made-up time
    forge = ("INSERT INTO pg_vision_errors (relation, row_identity, image_column, model, sqlstate, message{}) "
             "VALUES (%s::regclass, '{{}}', 'image', 'efficientnet', 'XX000', 'forged'{})")
    a.execute(f"REVOKE INSERT ON shop_a FROM {roles[1]}")
    assert fails_with(b, forge.format("", ""), ("shop_a",)) == "42501"
    assert fails_with(b, forge.format(", at", ", '2000-01-01'"), ("shop_b",)) == "42501"
    assert fails_with(b, "SELECT pg_vision_record_error('shop_a', '{}', 'image', 'efficientnet', 'XX000', 'forged')") == "42501"
    # no deleting or changing the other tenant's rows
    assert b.execute("DELETE FROM pg_vision_errors WHERE relation = 'shop_a'::regclass").rowcount == 0
    assert fails_with(b, "UPDATE pg_vision_errors SET message = 'x'") == "42501"
    with connect(db) as su:
        assert su.execute("SELECT relation::text FROM pg_vision_errors ORDER BY 1").fetchall() == [("shop_a",), ("shop_b",)]
    # the owner clears its own rows after a retry
    assert a.execute("DELETE FROM pg_vision_errors").rowcount == 1
    a.close(), b.close()


# --- pinned search_path ----------------------------------------------------------------------

HIJACK = """
CREATE TABLE public.hijack_calls (fn text);
GRANT INSERT ON public.hijack_calls TO PUBLIC;
CREATE FUNCTION public.jsonb_populate_record(r public.shop_a, j jsonb) RETURNS public.shop_a
  LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.hijack_calls VALUES ('jsonb_populate_record');
                              r.emb := NULL; RETURN r; END $$;
CREATE FUNCTION public.to_jsonb(r public.shop_a) RETURNS jsonb
  LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.hijack_calls VALUES ('to_jsonb'); RETURN '{}'; END $$;
CREATE FUNCTION public.jsonb_build_object(k name, v text) RETURNS jsonb
  LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.hijack_calls VALUES ('jsonb_build_object'); RETURN '{}'; END $$;
CREATE FUNCTION public.encode(b bytea, f text) RETURNS text
  LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.hijack_calls VALUES ('encode'); RETURN 'x'; END $$;
CREATE FUNCTION public.sha256(b bytea) RETURNS bytea
  LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.hijack_calls VALUES ('sha256'); RETURN '\\x00'; END $$;
CREATE FUNCTION public.hijack_eq(a bytea, b bytea) RETURNS boolean
  LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.hijack_calls VALUES ('= on bytea'); RETURN true; END $$;
CREATE OPERATOR public.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = public.hijack_eq);
CREATE FUNCTION public.hijack_tid_eq(a tid, b tid) RETURNS boolean
  LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.hijack_calls VALUES ('= on tid'); RETURN false; END $$;
CREATE OPERATOR public.= (LEFTARG = tid, RIGHTARG = tid, FUNCTION = public.hijack_tid_eq);
"""


def hijack_scenario(superuser, roles, expected, version):
    """Tenant B plants look-alikes of what the trigger and the backfill call; tenant A
    inserts, updates, stores a bad image and backfills. Returns the planted functions
    that ran, the ids of rows whose vector or checksum is not their image's, and whether
    the bad image and the backfill went through."""
    db = database(superuser, "hijack" + (version or "").replace(".", "_"), version)
    a, b = (connect(db, r) for r in roles)
    a.execute("SET client_min_messages = error")
    a.execute("CREATE TABLE public.shop_a (id int PRIMARY KEY, image bytea, emb vector(1280), checksum text)")
    b.execute(HIJACK)  # B needs only the table's row type, which PUBLIC may use
    a.execute("""CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON shop_a FOR EACH ROW
                 EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'checksum=checksum',
                                                          'on_error=null')""")
    a.execute("INSERT INTO shop_a (id, image) VALUES (1, %s)", (photos.shipped("chelsea.png"),))
    a.execute("UPDATE shop_a SET image = %s WHERE id = 1", (photos.shipped("coffee.png"),))
    bad_stored = fails_with(a, "INSERT INTO shop_a (id, image) VALUES (2, '\\xdeadbeef')") == "ok"
    a.execute("ALTER TABLE shop_a DISABLE TRIGGER embed")
    a.execute("INSERT INTO shop_a (id, image) SELECT 2 + i, %s FROM generate_series(1, 3) i", (photos.shipped("rocket.jpg"),))
    a.execute("ALTER TABLE shop_a ENABLE TRIGGER embed")
    backfilled = fails_with(a, "CALL pg_vision_backfill('shop_a', 'image', ARRAY['emb:efficientnet'], "
                               "checksum_column => 'checksum', batch_size => 2)") == "ok"
    with connect(db) as su:
        calls = sorted({fn for (fn,) in su.execute("SELECT fn FROM public.hijack_calls").fetchall()})
        rows = su.execute("SELECT id, emb::text, checksum, image_checksum(image) FROM shop_a "
                          "WHERE id <> 2 ORDER BY id").fetchall()
    a.close(), b.close()
    wrong = [i for i, emb, stored, actual in rows if expected[actual] != emb or stored != actual]
    return calls, wrong, bad_stored, backfilled


def test_trigger_and_backfill_call_nothing_planted_in_public(superuser, roles, expected):
    calls, wrong, bad_stored, backfilled = hijack_scenario(superuser, roles, expected, None)
    assert bad_stored and backfilled
    assert calls == [], f"the trigger or the backfill called functions another role planted: {calls}"
    assert wrong == [], f"rows {wrong} have a vector or checksum that is not their image's"


def test_the_hijack_worked_on_0_3_0(superuser, roles, expected):
    """The same scenario on the last release without pinned search_path: the planted
    functions run and decide what is stored, so the test above would see a hijack. (The
    bad image and the backfill fail there with 42501, the other half of issue 10.)"""
    calls, wrong, bad_stored, backfilled = hijack_scenario(superuser, roles, expected, "0.3.0")
    assert "jsonb_populate_record" in calls and wrong, (calls, wrong)
    assert not bad_stored and not backfilled


# --- backfill ----------------------------------------------------------------------------

def test_backfill_by_the_owner_and_its_progress_row(superuser, roles):
    db = database(superuser, "backfill")
    a, b = (connect(db, r) for r in roles)
    a.execute("CREATE TABLE shelf (id int PRIMARY KEY, image bytea, emb vector(1280), checksum text)")
    a.execute("INSERT INTO shelf SELECT i, %s FROM generate_series(1, 5) i", (photos.shipped("chelsea.png"),))
    a.execute("SET client_min_messages = warning")
    a.execute("CALL pg_vision_backfill('shelf', 'image', ARRAY['emb:efficientnet'], checksum_column => 'checksum', batch_size => 2)")
    assert a.execute("SELECT count(emb), count(checksum) FROM shelf").fetchone() == (5, 5)
    assert a.execute("SELECT rows_done, finished FROM pg_vision_backfill_progress").fetchall() == [(5, True)]
    assert b.execute("SELECT count(*) FROM pg_vision_backfill_progress").fetchone() == (0,)
    assert fails_with(b, "CALL pg_vision_backfill('shelf', 'image', ARRAY['emb:efficientnet'])") == "42501"
    assert b.execute("DELETE FROM pg_vision_backfill_progress").rowcount == 0
    a.close(), b.close()


def test_backfill_is_right_under_concurrent_deletes_and_inserts(superuser, roles, expected):
    """While the backfill runs in batches of 4, another session deletes rows, vacuums (so
    their line pointers can be reused) and inserts rows with other images into the freed
    space. At the end every vector must be its own row's image's."""
    db = database(superuser, "concurrent")
    a = connect(db, roles[0])
    a.execute("CREATE TABLE stock (id int PRIMARY KEY, image bytea, emb vector(1280), checksum text)")
    a.execute("ALTER TABLE stock SET (autovacuum_enabled = false)")
    images = [photos.shipped(n) for n in IMAGES]
    for i in range(60):
        a.execute("INSERT INTO stock (id, image) VALUES (%s, %s)", (i, images[i % 2]))
    churn = {"deleted": 0, "inserted": 0}

    def churner():
        # A bounded number of rounds, so the backfill can catch up: each deletes a row not
        # embedded yet (often one of the batch in flight), vacuums, inserts another image.
        with connect(db, roles[0]) as c:
            c.execute("SET lock_timeout = '5s'")
            for n in range(40):
                try:
                    c.execute("DELETE FROM stock WHERE id = (SELECT id FROM stock WHERE emb IS NULL ORDER BY random() LIMIT 1)")
                    churn["deleted"] += 1
                    c.execute("VACUUM stock")
                    c.execute("INSERT INTO stock (id, image) VALUES (%s, %s)", (1000 + n, images[2 + n % 2]))
                    churn["inserted"] += 1
                except psycopg.errors.LockNotAvailable:
                    pass
                time.sleep(0.02)

    t = threading.Thread(target=churner)
    t.start()
    try:
        a.execute("SET client_min_messages = warning")
        a.execute("SET statement_timeout = '300s'")
        a.execute("CALL pg_vision_backfill('stock', 'image', ARRAY['emb:efficientnet'], checksum_column => 'checksum', batch_size => 4)")
    finally:
        t.join()
    # rows the churner inserted after the backfill's last batch are left for the next run
    a.execute("CALL pg_vision_backfill('stock', 'image', ARRAY['emb:efficientnet'], checksum_column => 'checksum', batch_size => 4)")
    assert churn["deleted"] > 5 and churn["inserted"] > 5, churn
    assert a.execute("SELECT count(*) - count(emb) FROM stock").fetchone() == (0,)
    rows = a.execute("SELECT id, emb::text, image_checksum(image), checksum FROM stock").fetchall()
    wrong = [i for i, emb, actual, stored in rows if expected[actual] != emb or stored != actual]
    assert rows and not wrong, f"{len(wrong)} of {len(rows)} rows carry another image's vector or checksum: {wrong[:10]}"
    a.close()


def test_backfill_records_rows_it_cannot_update_and_finishes(superuser, roles):
    db = database(superuser, "suppressed")
    a = connect(db, roles[0])
    a.execute("CREATE TABLE guarded (id int PRIMARY KEY, image bytea, emb vector(1280), locked boolean)")
    a.execute("""CREATE FUNCTION keep_locked() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN IF OLD.locked THEN RETURN NULL; END IF; RETURN NEW; END $$""")
    a.execute("CREATE TRIGGER keep BEFORE UPDATE ON guarded FOR EACH ROW EXECUTE FUNCTION keep_locked()")
    a.execute("INSERT INTO guarded SELECT i, %s, NULL, i %% 3 = 0 FROM generate_series(1, 9) i", (photos.shipped("coffee.png"),))
    a.execute("SET client_min_messages = warning")
    a.execute("SET statement_timeout = '120s'")  # it used to select the suppressed rows forever
    a.execute("CALL pg_vision_backfill('guarded', 'image', ARRAY['emb:efficientnet'], batch_size => 2)")
    assert a.execute("SELECT count(emb) FROM guarded").fetchone() == (6,)
    assert a.execute("SELECT rows_failed FROM pg_vision_backfill_progress").fetchone() == (3,)
    errs = a.execute("SELECT row_identity->>'id', sqlstate FROM pg_vision_errors ORDER BY 1").fetchall()
    assert errs == [("3", "42501"), ("6", "42501"), ("9", "42501")]
    a.close()


# --- privileges ----------------------------------------------------------------------------

def test_other_sessions_and_warmup_need_a_grant(superuser, roles):
    db = database(superuser, "privileges")
    with connect(db, roles[0]) as a:
        assert fails_with(a, "SELECT pg_vision_warmup(ARRAY['efficientnet'])") == "42501"
        assert fails_with(a, "SELECT * FROM pg_vision_memory()") == "42501"
        assert fails_with(a, "SELECT * FROM pg_vision_memory") == "42501"
        assert fails_with(a, "SELECT * FROM pg_vision_memory_summary") == "42501"
        # what PUBLIC keeps: embedding, image facts, its own models
        a.execute("SELECT embed_efficientnet(%s), image_info(%s), image_checksum(%s)", (photos.shipped("chelsea.png"),) * 3)
        a.execute("SELECT * FROM pg_vision_models(), pg_vision_loaded_models()")
        a.execute("SELECT pg_vision_unload()")
    with connect(db, MONITOR) as m:
        m.execute("SELECT * FROM pg_vision_memory")
        m.execute("SELECT * FROM pg_vision_memory_summary")
    with connect(db) as su:
        su.execute(f"GRANT EXECUTE ON FUNCTION pg_vision_warmup(text[]) TO {roles[0]}")
    with connect(db, roles[0]) as a:
        a.execute("SELECT pg_vision_warmup(ARRAY['efficientnet'])")


# --- fair budget -------------------------------------------------------------------------

def budget_used(su):
    return su.execute("SELECT coalesce(sum(bytes), 0) FROM pg_vision_memory").fetchone()[0]


def empty_budget(su):
    """Every backend gives its models back (the module's own connections included)."""
    for (pid,) in su.execute("SELECT DISTINCT pid FROM pg_vision_memory").fetchall():
        su.execute("SELECT pg_vision_release_models(%s)", (pid,))
    deadline = time.monotonic() + 10
    while budget_used(su) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert budget_used(su) == 0, su.execute("SELECT * FROM pg_vision_memory").fetchall()


def fill_budget_as_tenant_a(db, roles, sessions=2):
    """Tenant A's sessions each load EfficientNet-Lite0 (about 20 MB) and then sit idle."""
    held = [connect(db, roles[0]) for _ in range(sessions)]
    for c in held:
        c.execute("SELECT embed_efficientnet(%s)", (photos.shipped("chelsea.png"),))
    return held


def first_success(conn, query, params, timeout):
    """Retries `query` while it fails with 53200; returns (seconds until it worked, the
    first failure's message and hint)."""
    t0 = time.monotonic()
    first = None
    while True:
        try:
            conn.execute(query, params)
            return time.monotonic() - t0, first
        except psycopg.errors.OutOfMemory as e:
            first = first or (e.diag.message_primary, e.diag.message_hint)
            assert time.monotonic() - t0 < timeout, f"still 53200 after {timeout} s: {first}"
            time.sleep(0.1)


def test_idle_sessions_of_one_role_keep_the_other_out_no_longer_than_the_idle_timeout(superuser, roles, system_settings):
    db = database(superuser, "fairness")
    system_settings.set("pg_vision.memory_budget", "45")   # two copies of EfficientNet-Lite0
    system_settings.set("pg_vision.model_idle_timeout", "3000")
    with connect(db) as su:
        empty_budget(su)
        held = fill_budget_as_tenant_a(db, roles)
        filled = time.monotonic()
        with connect(db, roles[1]) as b:
            took, first = first_success(b, "SELECT embed_efficientnet(%s)", (photos.shipped("coffee.png"),), timeout=10)
        waited = time.monotonic() - filled
        # B got in as soon as the first of A's sessions gave its model back; the second one's
        # timer, armed a moment later, fires a moment later: both must let go while idle.
        a_pids = {c.info.backend_pid for c in held}
        deadline = time.monotonic() + 2
        while True:
            left = {pid for (pid,) in su.execute("SELECT pid FROM pg_vision_memory").fetchall()}
            if not left & a_pids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert first is not None, "B got in at once: the budget was not full"
    assert "does not fit in pg_vision.memory_budget" in first[0]
    assert "pg_vision.model_idle_timeout" in first[1] and "pg_vision_release_models" in first[1]
    assert 2.5 < waited < 3 + 2, f"B waited {waited:.1f} s for an idle timeout of 3 s"
    # A's sessions gave their models back while idle, without running a statement
    assert not left & {c.info.backend_pid for c in held}
    for c in held:
        c.close()


def test_an_administrator_makes_another_backend_give_its_models_back(superuser, roles, system_settings):
    db = database(superuser, "release")
    system_settings.set("pg_vision.memory_budget", "45")
    system_settings.set("pg_vision.model_idle_timeout", "0")   # never on its own
    with connect(db) as su:
        empty_budget(su)
        held = fill_budget_as_tenant_a(db, roles)
        with connect(db, roles[1]) as b:
            assert fails_with(b, "SELECT embed_efficientnet(%s)", (photos.shipped("coffee.png"),)) == "53200"
            # an ordinary role may not make others release
            assert fails_with(b, "SELECT pg_vision_release_models(%s)", (held[0].info.backend_pid,)) == "42501"
            with connect(db, MONITOR) as admin:   # a member of pg_signal_backend
                assert admin.execute("SELECT pg_vision_release_models(%s)", (held[0].info.backend_pid,)).fetchone() == (True,)
                assert admin.execute("SELECT pg_vision_release_models(pg_backend_pid())").fetchone() == (False,)
                # a superuser's backend is out of its reach, as for pg_cancel_backend
                assert fails_with(admin, "SELECT pg_vision_release_models(%s)", (su.info.backend_pid,)) == "42501"
            took, _ = first_success(b, "SELECT embed_efficientnet(%s)", (photos.shipped("coffee.png"),), timeout=2)
        pids = {pid for (pid,) in su.execute("SELECT pid FROM pg_vision_memory").fetchall()}
    assert took < 1.0, f"the released models freed the budget only after {took:.2f} s"
    assert held[0].info.backend_pid not in pids and held[1].info.backend_pid in pids
    # the released session works on, loading the model again when it needs it
    held[0].execute("SELECT embed_efficientnet(%s)", (photos.shipped("chelsea.png"),))
    for c in held:
        c.close()


def test_a_per_role_limit_evicts_the_role_s_own_models_first(superuser, roles):
    db = database(superuser, "limit")
    with connect(db) as su:
        su.execute("SELECT pg_vision_warmup(ARRAY['efficientnet', 'efficientnet_lite2'])")  # measured sizes, for estimates
        su.execute(f"ALTER ROLE {roles[0]} IN DATABASE {db} SET pg_vision.backend_memory_limit = '30MB'")
        try:
            with connect(db, roles[0]) as a:
                assert fails_with(a, "SET pg_vision.backend_memory_limit = '1GB'") == "42501"
                a.execute("SELECT embed_efficientnet(%s)", (photos.shipped("chelsea.png"),))          # about 20 MB
                a.execute("SELECT embed_image('efficientnet_lite2', %s)", (photos.shipped("chelsea.png"),))  # about 24 MB
                assert [n for (n,) in a.execute("SELECT name FROM pg_vision_loaded_models()").fetchall()] == ["efficientnet_lite2"]
            su.execute(f"ALTER ROLE {roles[0]} IN DATABASE {db} SET pg_vision.backend_memory_limit = '20MB'")
            with connect(db, roles[0]) as a:
                a.execute("SELECT embed_efficientnet(%s)", (photos.shipped("chelsea.png"),))
                try:
                    a.execute("SELECT embed_image('efficientnet_lite2', %s)", (photos.shipped("chelsea.png"),))
                    raise AssertionError("a 24 MB model loaded under a 20 MB limit")
                except psycopg.errors.OutOfMemory as e:
                    assert "pg_vision.backend_memory_limit (20.0 MB)" in e.diag.message_primary
                # the failed load kept what the backend had
                assert [n for (n,) in a.execute("SELECT name FROM pg_vision_loaded_models()").fetchall()] == ["efficientnet"]
        finally:
            su.execute(f"ALTER ROLE {roles[0]} IN DATABASE {db} RESET pg_vision.backend_memory_limit")
            su.execute("SELECT pg_vision_unload()")
