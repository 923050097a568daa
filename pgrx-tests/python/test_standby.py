"""Search on read replicas (issue 13): a real primary and a hot standby made from it with
`pg_basebackup -R -X stream`, streaming replication, both with pg_vision in
shared_preload_libraries. The shop catalogue (sql/example_schema.sql, scripts/shop_demo.py:
20 real photos x 5 pictures, embedded by the trigger, HNSW index) is created and filled on
the primary after the standby was made, so the standby gets rows, vectors and index by WAL
replay. On the standby:

  - search by upload: the README's recommended query, as the ordinary application role,
    through a prepared statement, the upload's bytes as a bytea parameter, on the HNSW
    index: the photographed product comes first, and the rows equal the primary's;
  - text embedding (clip_fixture's text tower, random weights: shape, finite, unit length,
    deterministic, equal to the primary's);
  - the embeddings it computes equal the primary's for the same bytes (the trigger's stored
    vectors, and photos in every format through two models);
  - the memory budget: cluster-wide (shared table), a load beyond it refused with 53200,
    pg_vision_memory shows the loaded models, set with ALTER SYSTEM on the standby itself;
  - writes (the trigger, the backfill) fail with PostgreSQL's read-only error, 25006;
  - no pg_vision background worker runs there;
  - no backend crashed on either server, neither postmaster restarted.

The two clusters live in $STATE/standby-test/ (wiped at start, stopped at the end, also on
failure), run as the server's user (`postgres` when we are root), on the first free ports
from 54320 (as scripts/pg.sh picks its own). The project's own cluster is not used.
"""

import math
import os
import re
import shutil
import subprocess
from types import SimpleNamespace

import psycopg
import pytest

import captions
import photos
import shop_demo
from helpers import ServerHealth, as_server_user, env_sh, free_port, sqlstate, wait_for

DB = "pgv_shop"
APP = "pgv_app"  # the application role, as the other suites name it: LOGIN, no superuser
PRODUCTS = 20  # the demo's catalogue: 20 photos x 5 pictures
UPLOAD_OF = "chelsea.png"  # the product the customer photographs
MB = 1024 * 1024
BUDGET = "pg_vision.memory_budget"


def readme_search_query():
    """The README's recommended search-by-upload query (the first SQL block of its "Search
    by upload" section), with psycopg's placeholder for $1: the test runs what the README
    recommends."""
    with open(os.path.join(photos.REPO, "README.md")) as f:
        text = f.read()
    section = text[text.index("\n## Search by upload"):]
    query = re.search(r"```sql\n(.*?)```", section, re.S).group(1).strip().rstrip(";")
    assert "$1" in query and "%" not in query, query
    return query.replace("$1", "%s")


class Node:
    """One of this module's clusters: $STATE/standby-test/NAME (data), NAME.log, a port, the
    shared socket directory $STATE/standby-test/run."""

    def __init__(self, base, name, port):
        self.name, self.port = name, port
        self.data = os.path.join(base, name)
        self.log = os.path.join(base, f"{name}.log")
        self.run = os.path.join(base, "run")

    def pg(self, tool, *args, **kwargs):
        """A PostgreSQL program from $PGBIN, run as the server's user."""
        return subprocess.run(as_server_user([os.path.join(env_sh("PGBIN"), tool), *args]), check=True,
                              capture_output=True, text=True, **kwargs)

    def configure(self, **settings):
        """Appends settings to postgresql.conf (the last line of a setting wins)."""
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\n# {self.name}: test_standby.py\n")
            for name, value in settings.items():
                f.write(f"{name.replace('__', '.')} = '{value}'\n")

    def start(self):
        try:
            self.pg("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "120", "start")
        except subprocess.CalledProcessError:
            with open(self.log, errors="replace") as f:
                raise AssertionError(f"{self.name} did not start:\n" + f.read()[-3000:]) from None

    def running(self):
        return os.path.exists(os.path.join(self.data, "postmaster.pid")) and subprocess.run(
            as_server_user([os.path.join(env_sh("PGBIN"), "pg_ctl"), "-D", self.data, "status"]),
            capture_output=True).returncode == 0

    def stop(self, mode="fast"):
        if self.running():
            self.pg("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "120", "stop")

    def connect(self, user="postgres", dbname=DB, **kwargs):
        return photos.connect(user=user, dbname=dbname, host=self.run, port=self.port, **kwargs)

    def one(self, query, params=(), **kwargs):
        with self.connect(**kwargs) as c:
            return c.execute(query, params).fetchone()


def fresh_base():
    """$STATE/standby-test, emptied (clusters a killed run left behind stopped first) and
    owned by the server's user."""
    base = os.path.join(photos.state_dir(), "standby-test")
    for name in ("standby", "primary"):
        Node(base, name, 0).stop(mode="immediate")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(os.path.join(base, "run"))
    runas = env_sh("RUNAS")
    if runas:
        for d in (base, os.path.join(base, "run")):
            shutil.chown(d, user=runas)
    return base


def replayed(primary, standby):
    """Waits until the standby has replayed the primary's WAL as it is now; returns the LSN."""
    lsn = primary.one("SELECT pg_current_wal_lsn()::text")[0]
    wait_for(f"the standby replaying up to {lsn}",
             lambda: standby.one("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0])
    return lsn


@pytest.fixture(scope="module")
def replicas():
    """The primary and its streaming hot standby, the catalogue replayed on it."""
    base = fresh_base()
    nodes = []
    try:
        p1 = free_port()
        primary = Node(base, "primary", p1)
        nodes.append(primary)
        primary.pg("initdb", "-D", primary.data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C")
        # Written before the base backup, so the standby's postgresql.conf has them too.
        # pg_vision.indexer_databases names the test database on both servers: the primary's
        # workers start before the database is created below (and retry until it exists).
        primary.configure(port=p1, listen_addresses="127.0.0.1", unix_socket_directories=primary.run,
                          shared_preload_libraries="pg_vision", wal_level="replica", hot_standby="on",
                          max_wal_senders=4, pg_vision__indexer_databases=DB)
        primary.start()
        with primary.connect(dbname="postgres") as c:
            c.execute(f"CREATE DATABASE {DB}")
            c.execute(f"CREATE ROLE {APP} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION")
        with primary.connect() as c:
            c.execute("SET client_min_messages = warning")
            c.execute("CREATE EXTENSION pg_vision CASCADE")

        standby = Node(base, "standby", free_port(taken={p1}))
        nodes.append(standby)
        primary.pg("pg_basebackup", "-h", primary.run, "-p", str(p1), "-U", "postgres", "-D", standby.data,
                   "-R", "-X", "stream", "-c", "fast")
        standby.configure(port=standby.port)
        standby.start()
        wait_for("the standby streaming from the primary (pg_stat_replication)",
                 lambda: primary.one("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")[0] == 1)
        health = [ServerHealth(n.log, n.connect) for n in nodes]

        # The catalogue, made on the primary after the standby exists: the trigger embeds
        # each row there; rows, vectors and the HNSW index reach the standby as WAL.
        names = photos.names("photo", "other", "artwork")[:PRODUCTS]
        with primary.connect() as c, c.cursor() as cur:
            rows, _ = shop_demo.load_catalogue(cur, names)
            cur.execute(f"GRANT SELECT, INSERT, UPDATE ON products, product_images TO {APP}")
        replayed(primary, standby)
        yield SimpleNamespace(primary=primary, standby=standby, rows=rows)
        for h in health:
            h.check()
    finally:
        for n in reversed(nodes):
            n.stop()


# --- the setup itself ---------------------------------------------------------------------------

def test_the_standby_is_a_streaming_hot_standby_with_pg_vision_preloaded(replicas):
    p, s = replicas.primary, replicas.standby
    assert s.one("SELECT pg_is_in_recovery()")[0] is True
    assert p.one("SELECT pg_is_in_recovery()")[0] is False
    assert p.one("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")[0] == 1
    for node in (p, s):
        assert "pg_vision" in node.one("SHOW shared_preload_libraries")[0], node.name
    assert s.one("SHOW hot_standby")[0] == "on"
    # Every row arrived, embedded by the primary's trigger.
    assert s.one("SELECT count(*), count(embedding_efficientnet) FROM product_images") == (replicas.rows, replicas.rows)
    assert replicas.rows == 5 * PRODUCTS


# --- search by upload ---------------------------------------------------------------------------

def search(node, upload, times):
    """The README's query as the application role, prepared (server-side) and executed
    `times` times with the upload as a bytea parameter (index scans forced, as at catalogue
    scale): each execution's rows, the plan, and whether the server holds it prepared."""
    query = readme_search_query()
    with node.connect(user=APP) as c:
        c.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in c.execute("EXPLAIN (COSTS OFF) " + query, (upload,)).fetchall())
        runs = [c.execute(query, (upload,), prepare=True).fetchall() for _ in range(times)]
        prepared = c.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                             ("%embed_efficientnet%",)).fetchone()[0]
        product = dict(c.execute("SELECT i.id, p.name FROM product_images i JOIN products p ON p.id = i.product_id"
                                 ).fetchall())
    return runs, plan, prepared, product


@pytest.fixture(scope="module")
def searched(replicas):
    upload = shop_demo.customer_photo(UPLOAD_OF)
    stored = replicas.standby.one("SELECT count(*) FROM product_images WHERE image = %s", (upload,))[0]
    assert stored == 0, "the upload must be none of the stored pictures"
    # 7 executions: past the 5 custom plans after which PostgreSQL may switch to a generic one.
    return (search(replicas.standby, upload, 7), search(replicas.primary, upload, 1))


def test_search_by_upload_on_the_standby_finds_the_product_first(searched, capsys):
    (runs, plan, prepared, product), _ = searched
    with capsys.disabled():
        print(f"\n  standby, search by a customer's photo of {UPLOAD_OF}: "
              + ", ".join(f"{product[i]} {sim:.3f}" for i, sim in runs[0][:5]))
    assert "Index Scan using product_images_efficientnet_hnsw" in plan, plan
    assert prepared == 1, "the search did not run as a server-side prepared statement"
    assert len(runs[0]) == 10
    assert product[runs[0][0][0]] == UPLOAD_OF.split(".")[0]
    assert all(r == runs[0] for r in runs), "executions of the prepared statement differ"


def test_search_on_the_standby_equals_the_primarys(searched):
    (standby_runs, *_), (primary_runs, *_) = searched
    assert standby_runs[0] == primary_runs[0]


def test_a_multi_host_connection_string_routes_searches_to_the_standby(replicas):
    """libpq's target_session_attrs (psycopg here; Npgsql's Target Session Attributes works
    alike): the primary listed first, prefer-standby still lands on the standby."""
    p, s = replicas.primary, replicas.standby
    hosts = dict(host=f"{p.run},{s.run}", port=f"{p.port},{s.port}")
    for attrs, standby in (("prefer-standby", True), ("standby", True), ("primary", False), ("read-write", False)):
        with photos.connect(user=APP, dbname=DB, target_session_attrs=attrs, **hosts) as c:
            assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is standby, attrs


# --- text ----------------------------------------------------------------------------------------

def text_vectors(node, texts, user=APP):
    with node.connect(user=user) as c:
        return [c.execute("SELECT embed_text('clip_fixture', %s)::real[]", (t,)).fetchone()[0] for t in texts]


def test_text_embedding_on_the_standby(replicas):
    """clip_fixture has random weights: shape, values and equality, never meaning."""
    texts = captions.product_captions(6)
    s, p = replicas.standby, replicas.primary
    dim = s.one("SELECT pg_vision_model_dim('clip_fixture')", user=APP)[0]
    first, again, on_primary = text_vectors(s, texts), text_vectors(s, texts), text_vectors(p, texts)
    assert dim == 512
    for t, v in zip(texts, first):
        assert len(v) == dim, t
        assert all(math.isfinite(x) for x in v), t
        assert abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4, t  # the manifest L2-normalises
    assert len({tuple(v) for v in first}) == len(texts), "different captions gave the same vector"
    assert again == first, "the same caption gave another vector in a new session"
    assert on_primary == first, "the standby's text vectors differ from the primary's"


# --- the same vectors as the primary -----------------------------------------------------------

def test_standby_recomputes_the_primarys_stored_vectors(replicas):
    """Each picture's vector as the primary's trigger stored it equals what the standby
    computes from the same bytes."""
    equal, total = replicas.standby.one(
        "SELECT count(*) FILTER (WHERE embedding_efficientnet = embed_efficientnet(image)), count(*) FROM product_images",
        user=APP)
    assert (equal, total) == (replicas.rows, replicas.rows)


@pytest.mark.parametrize("model", ["efficientnet", "clip_fixture"])
def test_standby_embeddings_equal_the_primarys(replicas, model):
    """Every format variant of the corpus and a phone-sized JPEG (reduced DCT scale)."""
    images = photos.derived() + photos.large()[:1]
    got = {}
    for node in (replicas.standby, replicas.primary):
        with node.connect(user=APP) as c:
            got[node.name] = [c.execute("SELECT embed_image(%s, %s)::real[]", (model, data)).fetchone()[0]
                              for _, data in images]
    differ = [name for (name, _), a, b in zip(images, got["standby"], got["primary"]) if a != b]
    assert not differ, f"{model}: standby and primary differ on {differ}"
    assert all(len(v) > 0 for v in got["standby"])


# --- the memory budget --------------------------------------------------------------------------

def memory_rows(c, pid=None):
    query = "SELECT pid, model, tower FROM pg_vision_memory" + (" WHERE pid = %s" if pid else "") + " ORDER BY 1, 2, 3"
    return c.execute(query, (pid,) if pid else ()).fetchall()


@pytest.fixture(scope="module")
def budget(replicas):
    """On the standby: a session holding efficientnet and clip_fixture's text tower, the
    budget set just above what it holds (ALTER SYSTEM on the standby, reload), and the
    application role's search embedding on top of that."""
    s = replicas.standby
    upload = shop_demo.customer_photo(UPLOAD_OF)
    # Each backend its own copy of the weights, so that one more efficientnet costs its
    # file's size (with shared weights it would add about 2 MB: test_shared_weights.py).
    photos.alter_system("pg_vision.shared_weights", "off", connect=s.connect)
    with s.connect() as watcher, s.connect() as holder:
        # Other tests' sessions are gone (their rows leave when their backends exit).
        wait_for("pg_vision_memory empty on the standby", lambda: not memory_rows(watcher))
        cluster_wide = watcher.execute("SELECT cluster_wide FROM pg_vision_memory_summary").fetchone()[0]
        assert cluster_wide is True, \
            "the budget is per connection on the standby: pg_vision is not in its shared_preload_libraries"
        holder.execute("SELECT embed_efficientnet(%s)", (upload,))
        holder.execute("SELECT embed_text('clip_fixture', 'a red summer dress')")
        holder_pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        held = watcher.execute("SELECT sum(bytes) FROM pg_vision_memory WHERE pid = %s", (holder_pid,)).fetchone()[0]
        limit_mb = math.ceil(held / MB) + 2  # holds the holder's models; not one more efficientnet (about 19 MB)
        photos.alter_system(BUDGET, limit_mb, connect=s.connect)
        try:
            with s.connect(user=APP) as app:
                app_pid = app.execute("SELECT pg_backend_pid()").fetchone()[0]
                try:
                    app.execute(readme_search_query(), (upload,))
                    refused = None
                except psycopg.errors.OutOfMemory as e:
                    refused = e
                app_rows_refused = memory_rows(watcher, app_pid)
                rows_while_held = memory_rows(watcher)
                summary_while_held = watcher.execute(
                    "SELECT budget, used, backends, cluster_wide FROM pg_vision_memory_summary").fetchone()
                holder.close()
                wait_for("the holder's models released", lambda: not memory_rows(watcher, holder_pid))
                hits = app.execute(readme_search_query(), (upload,)).fetchall()
                app_rows_after = memory_rows(watcher, app_pid)
        finally:
            photos.alter_system(BUDGET, None, connect=s.connect)
            photos.alter_system("pg_vision.shared_weights", None, connect=s.connect)
    return dict(limit_mb=limit_mb, held=held, holder_pid=holder_pid, app_pid=app_pid, refused=refused,
                rows_while_held=rows_while_held, summary_while_held=summary_while_held,
                app_rows_refused=app_rows_refused, hits=hits, app_rows_after=app_rows_after)


def test_budget_is_cluster_wide_on_the_standby(budget):
    assert budget["summary_while_held"][3] is True
    assert budget["summary_while_held"][0] == budget["limit_mb"] * MB


def test_pg_vision_memory_shows_the_models_loaded_on_the_standby(budget):
    pid = budget["holder_pid"]
    assert budget["rows_while_held"] == [(pid, "clip_fixture", "text"), (pid, "efficientnet", "image")]


def test_a_load_beyond_the_budget_is_refused_on_the_standby(budget, capsys):
    e = budget["refused"]
    assert e is not None, f"efficientnet loaded beyond a {budget['limit_mb']} MB budget that another session fills"
    with capsys.disabled():
        print(f"\n  standby: ERROR {e.sqlstate}: {e.diag.message_primary}")
    assert e.sqlstate == "53200"
    msg = e.diag.message_primary
    assert '"efficientnet"' in msg and "pg_vision.memory_budget" in msg and "1 backend(s)" in msg, msg
    assert budget["app_rows_refused"] == [], "a refused load left a reservation"


def test_the_refused_session_searches_once_the_budget_has_room(budget):
    assert budget["hits"] and len(budget["hits"]) == 10
    assert budget["app_rows_after"] == [(budget["app_pid"], "efficientnet", "image")]


# --- writes -------------------------------------------------------------------------------------

WRITES = {
    "INSERT (the trigger)": "INSERT INTO product_images (product_id, image) SELECT id, %s FROM products LIMIT 1",
    "UPDATE OF image (the trigger)": "UPDATE product_images SET image = %s WHERE position = 0",
}


@pytest.mark.parametrize("what", list(WRITES))
def test_writes_fail_cleanly_on_the_standby(replicas, what):
    upload = shop_demo.customer_photo(UPLOAD_OF)
    with replicas.standby.connect(user=APP) as c:
        state, message = sqlstate(c, WRITES[what], (upload,))
        assert (state, message) == ("25006", f"cannot execute {what.split()[0]} in a read-only transaction")
        assert c.execute("SELECT vector_dims(embed_efficientnet(%s))", (upload,)).fetchone()[0] == 1280
    # The same statement, by the same role, works on the primary (its trigger embeds): the
    # standby refused it for being read-only, not for privileges. Rolled back.
    with replicas.primary.connect(user=APP) as c, c.transaction(force_rollback=True):
        written = c.execute(WRITES[what], (upload,)).rowcount
        embedded = c.execute("SELECT count(*) FROM product_images WHERE image = %s "
                             "AND embedding_efficientnet = embed_efficientnet(image)", (upload,)).fetchone()[0]
        assert written >= 1 and embedded == written


def test_backfill_fails_cleanly_on_the_standby(replicas):
    with replicas.standby.connect(user=APP) as c:
        state, message = sqlstate(c, "CALL pg_vision_backfill('product_images', 'image', "
                                     "ARRAY['embedding_efficientnet:efficientnet'])")
        assert state == "25006", (state, message)
        assert c.execute("SELECT 1").fetchone()[0] == 1


# --- background workers -------------------------------------------------------------------------

def test_the_workers_do_nothing_on_the_standby(replicas):
    # pg_vision's indexer workers start with BgWorkerStart_RecoveryFinished: both servers'
    # postgresql.conf name the database, the primary runs them, the standby none.
    p, s = replicas.primary, replicas.standby
    with open(os.path.join(s.data, "postgresql.conf")) as f:
        assert f"pg_vision.indexer_databases = '{DB}'" in f.read().splitlines()
    assert s.one("SELECT setting FROM pg_settings WHERE name = 'pg_vision.indexer_databases'")[0] == DB
    # The primary's workers started before the database existed; they retry every 5 s.
    wait_for("the primary's indexer workers",
             lambda: p.one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_vision indexer'")[0] == 2,
             timeout=30)
    assert s.one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_vision indexer'")[0] == 0
    assert s.one("SELECT count(*) FROM pg_vision_indexer_workers()")[0] == 0
    # Read-only on a standby (they assigned a transaction id, an error in recovery).
    assert s.one("SELECT count(*) FROM pg_vision_indexer_batches()")[0] == 0
    assert s.one("SELECT pg_vision_trigger_args('pg_class'::regclass, 'none') IS NULL")[0]