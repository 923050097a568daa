#!/usr/bin/env python3
"""pg_vision side by side with the Python service it replaced (scripts/bench/service.py:
FastAPI + uvicorn, Pillow, onnxruntime, pgvector), in one run: the same upload, the same
catalogue table, the same ONNX file, the same intra-op threads.

Setup: database pg_vision_versus (created if missing, as the superuser: the repo has no
benchmark role), table versus_items (id, embedding vector(1280) stored PLAIN) of --rows
rows and an HNSW index (vector_cosine_ops), rebuilt each run. Its vectors are pg_vision's
embeddings of the real photographs (photos.names("photo")), each row one of them plus
Gaussian noise (NOISE times the photo's mean feature, clipped at 0 like the model's
features): clusters of realistic vectors. The upload is photos.jpeg_1000() (1000x1000
JPEG, quality 90), the same bytes for both sides, but each search sends it with another
JPEG comment (tagged()): the same pixels and work, and no cache keyed by the bytes can
answer it, as none would answer a new upload.

Everything goes over TCP on 127.0.0.1, the service's own connections to PostgreSQL too.
pg_vision gets pg_vision.intra_op_threads = --threads; the service runs --workers uvicorn
workers (default one per core), each with an onnxruntime session of --threads threads.

1. latency: one persistent connection each (psycopg with SEARCH_SQL prepared and the
   image as a binary bytea parameter; http.client with keep-alive posting the multipart
   form), WARMUP_CALLS each, then --iterations searches each, interleaved (which side goes
   first alternates); p50/p95/p99/mean of the client's wall time with the result parsed,
   and the ratio service p50 / pg_vision p50. Both sides' last top 10 are compared.
2. throughput: --clients client processes per side, pg_vision then the service, each
   searching in a loop for --seconds (the service's connections spread evenly over its
   workers, see spread_evenly(); --kernel-spread leaves them where the kernel puts them); completed searches per second and the ratio
   pg_vision / service, the machine's CPU busy and steal (/proc/stat), the serving
   processes' CPU (pg_vision: the clients' backends; the service: uvicorn's processes and
   their backends) per search and per second (the cores each side got: on a machine doing
   other work too, searches/s follow it), and the clients' own share of the CPU.
3. ceilings: what the ratios could at most be on this machine with the same ONNX file, ONNX
   Runtime and recipe, even if pg_vision's resize, search, SQL and network cost nothing:
   latency <= service p50 / (pg_vision's decode p50 + inference p50, from pg_vision_profile());
   throughput (the machine is CPU-bound under 8 clients) <= the service's serving CPU per
   search / the model's CPU per image, best of batches of 1-16 in one thread of Python
   onnxruntime with the service's session options (CEILING_BATCHES: batching does not help
   this model, so no cross-connection batching could either).
4. with --sweep 1,2,4,8: the throughput phase again for each of those numbers of clients,
   --sweep-seconds per side each (the curve of scripts/bench/charts.py's throughput chart).
With --profile, where the time goes, on the latency run's searches: the service's
Server-Timing header (decode, preprocess, inference, query) and pg_vision_profile()
(decode, preprocess, inference; one more, untimed, embedding per iteration).

Usage: scripts/bench/versus.py [--rows 2000] [--iterations 200] [--clients 8] [--seconds 20]
           [--threads 2] [--workers N] [--kernel-spread] [--profile] [--sweep 1,2,4,8]
           [--sweep-seconds 10] [--json FILE]
"""

import argparse
import collections
import contextlib
import http.client
import importlib.metadata
import json
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for photos.py
import photos  # noqa: E402

DATABASE = "pg_vision_versus"
TABLE = "versus_items"
MODEL = "efficientnet"
# pg_vision's search of TABLE (%b: the upload, a binary bytea parameter): README's recommended
# query ("Search by upload") without the product join, whose MATERIALIZED CTE embeds the
# upload once by construction, whatever the plan, memo or not. (Before pg_vision's memo, in
# 0.4.0, the LATERAL form `FROM versus_items, LATERAL (SELECT embed_efficientnet($1) AS q) s
# ORDER BY embedding <=> q` ran the model twice per search under a custom plan and 21 times
# under the generic plan a prepared statement switched to after 5 executions.)
SEARCH_SQL = """
WITH q AS MATERIALIZED (SELECT embed_efficientnet(%b) AS v)
SELECT id, 1 - (embedding <=> (SELECT v FROM q)) AS similarity
  FROM versus_items
 ORDER BY embedding <=> (SELECT v FROM q)
 LIMIT 10"""
WARMUP_CALLS = 10
NOISE = 0.5
PG_APP = "pgv-versus"  # application_name of pg_vision's client connections
SERVICE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "service.py")
SERVICE_APP = "pgv-service"  # application_name service.py gives its connections
STARTUP_TIMEOUT_S = 180
BARRIER_TIMEOUT_S = 300


# --- the database ---------------------------------------------------------------------------

def dsn(port, dbname=DATABASE):
    return f"host=127.0.0.1 port={port} user=postgres dbname={dbname}"


def prepare_database():
    """Creates DATABASE with pg_vision (and pgvector) if missing, and updates pg_vision."""
    with photos.connect() as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            c.execute(f"CREATE DATABASE {DATABASE}")
    with photos.connect(dbname=DATABASE) as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_vision CASCADE")
        c.execute("ALTER EXTENSION pg_vision UPDATE")  # to the installed library's version


def model_dir(conn):
    """pg_vision.model_dir with $sharedir expanded: where pg_vision loads its models from."""
    (setting,) = conn.execute("SHOW pg_vision.model_dir").fetchone()
    (sharedir,) = conn.execute("SELECT setting FROM pg_config WHERE name = 'SHAREDIR'").fetchone()
    return setting.replace("$sharedir", sharedir)


def catalogue_vectors(conn, rows, seed=11):
    """rows x dim float32: pg_vision embeddings of the real photos, repeated with noise."""
    bases = np.array([conn.execute(f"SELECT embed_{MODEL}(%b)", [photos.shipped(n)]).fetchone()[0].to_numpy()
                      for n in photos.names("photo")], dtype=np.float32)
    rng = np.random.default_rng(seed)
    picked = bases[np.arange(rows) % len(bases)]
    noise = rng.normal(0.0, 1.0, picked.shape) * NOISE * picked.mean(axis=1, keepdims=True)
    return np.maximum(picked + noise, 0.0).astype(np.float32)


def build_table(conn, rows):
    """(Re)creates TABLE with `rows` vectors and its HNSW index; returns seconds taken."""
    t0 = time.perf_counter()
    vectors = catalogue_vectors(conn, rows)
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, embedding vector({vectors.shape[1]}))")
    # 5 KB vectors kept out of TOAST, as README ("Search by upload") advises.
    conn.execute(f"ALTER TABLE {TABLE} ALTER COLUMN embedding SET STORAGE PLAIN")
    with conn.cursor().copy(f"COPY {TABLE} (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["integer", "vector"])
        for i, v in enumerate(vectors, 1):
            copy.write_row((i, v))
    conn.execute(f"CREATE INDEX ON {TABLE} USING hnsw (embedding vector_cosine_ops)")
    conn.execute(f"ANALYZE {TABLE}")
    return time.perf_counter() - t0


def scan_nodes(conn, query, params):
    """The scan nodes of the plan the query gets with these parameters (a custom plan)."""
    plan = conn.execute("EXPLAIN (COSTS OFF) " + query, params).fetchall()
    return "; ".join(line.strip(" ->") for (line,) in plan if "Scan" in line and "CTE Scan" not in line)


def plans(conn, image, vector):
    """{side: scan nodes} of both searches, to show both use the HNSW index."""
    # Imported here: only this function needs the service's code, and the client processes,
    # which import this module, do not have to load FastAPI and onnxruntime.
    import service

    service_query = sql.SQL(service.SEARCH_SQL).format(table=sql.Identifier(TABLE)).as_string(conn)
    return {"pg_vision": scan_nodes(conn, SEARCH_SQL, [image]),
            "service": scan_nodes(conn, service_query, {"q": vector, "k": 10})}


# --- the two clients ------------------------------------------------------------------------

class PgVisionClient:
    """pg_vision's side: one psycopg connection, the prepared SEARCH_SQL."""

    def __init__(self, pg_port, threads, **_):
        self.conn = psycopg.connect(dsn(pg_port), autocommit=True, application_name=PG_APP)
        self.conn.execute(f"SET pg_vision.intra_op_threads = {int(threads)}")
        self.conn.execute("SELECT pg_vision_unload()")  # the next call loads it with that setting

    def search(self, upload):
        return self.conn.execute(SEARCH_SQL, [upload], prepare=True).fetchall()

    def server_pid(self):
        """The backend serving this connection."""
        return self.conn.info.backend_pid

    def close(self):
        self.conn.close()


class ServiceClient:
    """The service's side: one keep-alive HTTP connection posting the multipart form."""

    def __init__(self, http_port, **_):
        self.http = http.client.HTTPConnection("127.0.0.1", http_port)
        boundary = "pgvversus" + os.urandom(8).hex()
        self.head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload.jpg"\r\n'
                     f"Content-Type: image/jpeg\r\n\r\n").encode()
        self.tail = (f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n'
                     f"--{boundary}--\r\n").encode()
        self.headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        self.server_timing = None

    def search(self, upload):
        self.http.request("POST", "/search", self.head + upload + self.tail, self.headers)
        response = self.http.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"service answered {response.status}: {body[:300]!r}")
        self.server_timing = response.getheader("Server-Timing")
        return [(hit["id"], hit["similarity"]) for hit in json.loads(body)]

    def server_pid(self):
        """The uvicorn worker that accepted this connection (it keeps it)."""
        self.http.request("GET", "/health")
        return json.loads(self.http.getresponse().read())["pid"]

    def close(self):
        self.http.close()


CLIENTS = {"pg_vision": PgVisionClient, "service": ServiceClient}


# --- the service ----------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path, lines=30):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def wait_ready(proc, log, workers, port):
    """Waits until each uvicorn worker has finished its startup (loaded and warmed its model)
    and /health answers."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        with open(log, errors="replace") as f:
            text = f.read()
        if proc.poll() is not None or "Application startup failed" in text:
            raise RuntimeError(f"the service did not start:\n{log_tail(log)}")
        if text.count("Application startup complete.") >= workers:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.2)
    raise RuntimeError(f"the service was not ready after {STARTUP_TIMEOUT_S} s:\n{log_tail(log)}")


@contextlib.contextmanager
def running_service(args, pg_port, models):
    """Runs service.py (its own process group) for the duration of the block."""
    log = tempfile.NamedTemporaryFile(prefix="versus-service-", suffix=".log", delete=False)
    cmd = [sys.executable, SERVICE, "--dsn", dsn(pg_port), "--table", TABLE, "--model-dir", models,
           "--model", MODEL, "--threads", str(args.threads), "--workers", str(args.workers),
           "--port", str(args.port)] + (["--profile"] if args.profile else [])
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(proc, log.name, args.workers, args.port)
        yield proc
    finally:
        stop_service(proc)
        log.close()
        os.unlink(log.name)


def stop_service(proc):
    """SIGTERM to the service's process group (uvicorn and its workers), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- measurements ---------------------------------------------------------------------------

def stats(samples):
    a = np.asarray(samples, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": p50, "p95": p95, "p99": p99, "mean": a.mean(), "n": len(a)}


def tagged(image, tag):
    """The JPEG `image` with a comment segment carrying `tag` after its JFIF header: the same
    pixels and decoding work in other bytes, so that no cache keyed by the bytes (a memo of
    recent embeddings, say) answers a search, as none would answer a new upload."""
    at = 2
    if image[2:4] == b"\xff\xe0":  # the JFIF APP0 segment stays first
        at += 2 + int.from_bytes(image[4:6], "big")
    text = tag.encode()
    return image[:at] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + image[at:]


def timed(client, upload):
    """(wall ms, result) of one search."""
    t0 = time.perf_counter()
    result = client.search(upload)
    return (time.perf_counter() - t0) * 1e3, result


def server_timing(header):
    """{step: ms} from a Server-Timing header."""
    return {name: float(dur.split("=", 1)[1]) for name, dur in (part.strip().split(";", 1) for part in header.split(","))}


def agreement(pg_hits, service_hits):
    """How far the two sides' top k agree: ids in common, same order, largest difference of similarity."""
    pg, service = dict(pg_hits), dict(service_hits)
    common = pg.keys() & service.keys()
    return {"k": len(pg), "common_ids": len(common), "same_order": list(pg) == list(service),
            "max_similarity_difference": max((abs(pg[i] - service[i]) for i in common), default=float("nan"))}


def latency(args, spec):
    """Interleaved sequential searches: ({side: stats}, {side: {step: stats}} with --profile
    (the service's Server-Timing; pg_vision_profile() called between the searches), the
    agreement of the last answers)."""
    clients = {side: make(**spec) for side, make in CLIENTS.items()}
    try:
        for client in clients.values():
            for i in range(WARMUP_CALLS):
                client.search(tagged(spec["image"], f"warm-up {i}"))
        wall = {side: [] for side in clients}
        steps, last = {side: [] for side in clients}, {}
        for i in range(args.iterations):
            upload = tagged(spec["image"], f"latency {i}")  # the same bytes for both sides
            for side in (("pg_vision", "service") if i % 2 == 0 else ("service", "pg_vision")):
                ms, last[side] = timed(clients[side], upload)
                wall[side].append(ms)
            if args.profile:
                steps["service"].append(server_timing(clients["service"].server_timing))
                steps["pg_vision"].append(pg_vision_profile(clients["pg_vision"].conn, upload))
    finally:
        for client in clients.values():
            client.close()
    split = {side: {step: stats([s[step] for s in v]) for step in v[0]} for side, v in steps.items()} if args.profile else None
    return {side: stats(v) for side, v in wall.items()}, split, agreement(last["pg_vision"], last["service"])


def pg_vision_profile(conn, image):
    """{step: ms} of pg_vision_profile(): decode, preprocess, inference and their total."""
    columns = ("decode_ms", "preprocess_ms", "inference_ms", "total_ms")
    row = conn.execute(f"SELECT {', '.join(columns)} FROM pg_vision_profile(%s, %b)", [MODEL, image],
                       prepare=True).fetchone()
    return {name.removesuffix("_ms"): ms for name, ms in zip(columns, row)}


CEILING_BATCHES = (1, 2, 4, 8, 16)
CEILING_CALLS = 30


def inference_cpu_floor(models):
    """{batch: CPU ms per image} of the model alone, one intra-op thread (no time lost to
    thread hand-offs), in the service's own model manager (its manifest and session
    options), random inputs (the cost does not depend on the pixels); and the smallest."""
    import service  # scripts/bench/service.py, beside this script

    model = service.ModelManager(models, MODEL, threads=1)
    session, manifest = model.session, model.manifest
    name = session.get_inputs()[0].name
    per_batch = {}
    for batch in CEILING_BATCHES:
        x = np.random.default_rng(batch).random((batch, 3, manifest["height"], manifest["width"]), dtype=np.float32)
        for _ in range(3):
            session.run(None, {name: x})
        runs = max(4, 64 // batch)
        c0 = time.process_time()
        for _ in range(runs):
            session.run(None, {name: x})
        per_batch[batch] = (time.process_time() - c0) * 1e3 / (runs * batch)
    return per_batch, min(per_batch.values())


def ceilings(conn, image, models, lat, split, runs):
    """The most each ratio could be (see the docstring's step 3)."""
    if split is None:  # no --profile: pg_vision_profile() on its own
        steps = [pg_vision_profile(conn, tagged(image, f"ceiling {i}")) for i in range(CEILING_CALLS)]
        split = {"pg_vision": {step: stats([s[step] for s in steps]) for step in steps[0]}}
    pg = split["pg_vision"]
    floor_ms = pg["decode"]["p50"] + pg["inference"]["p50"]
    per_batch, cpu_floor = inference_cpu_floor(models)
    service_cpu = runs["service"]["serving_cpu_ms_per_search"]
    return {"pg_vision_decode_plus_inference_ms": floor_ms,
            "latency_ratio_ceiling": lat["service"]["p50"] / floor_ms,
            "latency_ms_needed_for_2_5x": lat["service"]["p50"] / 2.5,
            "inference_cpu_ms_per_image_by_batch": per_batch, "inference_cpu_ms_per_image": cpu_floor,
            "throughput_ratio_ceiling": service_cpu / cpu_floor,
            "cpu_ms_per_search_needed_for_3x": service_cpu / 3}


def cpu_times():
    """(busy, steal, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait, steal, total


def process_cpu_s(pid):
    """User + system CPU seconds of a process, all its threads (0 if it has gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root):
    """root and every process under it, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def serving_pids(conn, side, service_pid):
    """The processes doing one side's work: its clients' backends (application_name), plus
    uvicorn's process tree for the service."""
    app = PG_APP if side == "pg_vision" else SERVICE_APP
    pids = [pid for (pid,) in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s", [DATABASE, app])]
    return pids + (descendants(service_pid) if side == "service" else [])


def claim(slots, pid, share):
    """Counts one client for server process `pid` in `slots` (pid, count, pid, count, ...)
    unless it already has `share` of them; True if counted."""
    with slots.get_lock():
        for i in range(0, len(slots), 2):
            if slots[i] in (pid, 0):
                if slots[i + 1] >= share:
                    return False
                slots[i], slots[i + 1] = pid, slots[i + 1] + 1
                return True
    return False


def spread_evenly(client, slots, share, tries=200):
    """Reconnects a service client until its connection lands on a uvicorn worker that has
    fewer than `share` clients. The workers share one listening socket, so the kernel picks
    which accepts a connection; it can give one worker 6 or 7 of 8, and a worker with that
    many is held back by the GIL (about 0.7 of a core measured here), which halves the
    service's throughput. Even spreading is the service's best case."""
    for _ in range(tries):
        if claim(slots, client.server_pid(), share):
            return
        client.close()  # the next request opens a new connection
    raise RuntimeError(f"no worker with fewer than {share} clients after {tries} connections")


def throughput_client(index, side, spec, seconds, barrier, results, spread):
    """One client process: warm up, wait for the others, search until `seconds` have passed;
    puts its latencies (searches completed within the window) and its own CPU time.
    `spread`: None, or (slots, share) for spread_evenly()."""
    try:
        client = CLIENTS[side](**spec)
        if spread:
            spread_evenly(client, *spread)
        for i in range(WARMUP_CALLS):
            client.search(tagged(spec["image"], f"warm-up {index} {i}"))
    except BaseException:
        barrier.abort()  # the driver and the other clients stop waiting
        raise
    barrier.wait(BARRIER_TIMEOUT_S)  # everyone ready
    barrier.wait(BARRIER_TIMEOUT_S)  # go
    cpu0, deadline, latencies = time.process_time(), time.monotonic() + seconds, []
    while True:
        upload = tagged(spec["image"], f"client {index} search {len(latencies)}")
        if (start := time.monotonic()) >= deadline:
            break
        client.search(upload)
        if (end := time.monotonic()) <= deadline:
            latencies.append((end - start) * 1e3)
    results.put({"latencies": latencies, "cpu_s": time.process_time() - cpu0, "server_pid": client.server_pid()})
    client.close()


def throughput(side, args, spec, conn, service_pid):
    """--clients processes searching for --seconds: searches/s, latency, CPU figures."""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited connections
    barrier, results = ctx.Barrier(args.clients + 1), ctx.Queue()
    spread = None
    if side == "service" and not args.kernel_spread:
        spread = (ctx.Array("i", 2 * args.workers), -(-args.clients // args.workers))
    procs = [ctx.Process(target=throughput_client, args=(i, side, spec, args.seconds, barrier, results, spread))
             for i in range(args.clients)]
    for p in procs:
        p.start()
    try:
        barrier.wait(BARRIER_TIMEOUT_S)
        pids = serving_pids(conn, side, service_pid)
        cpu0, serving0 = cpu_times(), sum(process_cpu_s(p) for p in pids)
        barrier.wait(BARRIER_TIMEOUT_S)
        time.sleep(args.seconds)
        cpu1, serving1 = cpu_times(), sum(process_cpu_s(p) for p in pids)
        per_client = [results.get(timeout=BARRIER_TIMEOUT_S) for _ in procs]
    finally:
        barrier.abort()  # if the driver stops early, clients still waiting stop too
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    latencies = [ms for c in per_client for ms in c["latencies"]]
    total = cpu1[2] - cpu0[2]
    return {"clients": args.clients, "seconds": args.seconds, "searches": len(latencies),
            "searches_per_s": len(latencies) / args.seconds, "latency_ms": stats(latencies),
            "machine_cpu_busy_percent": 100.0 * (cpu1[0] - cpu0[0]) / total,
            "cpu_steal_percent": 100.0 * (cpu1[1] - cpu0[1]) / total,
            "serving_cpu_ms_per_search": (serving1 - serving0) * 1e3 / max(len(latencies), 1),
            "serving_cpu_cores": (serving1 - serving0) / args.seconds,
            "serving_processes": len(pids),
            "client_cpu_percent": 100.0 * sum(c["cpu_s"] for c in per_client) / (args.seconds * os.cpu_count()),
            "clients_per_server_process": sorted(collections.Counter(c["server_pid"] for c in per_client).values(),
                                                 reverse=True)}


def sweep(args, spec, conn, service_pid):
    """[{clients, side: throughput()}] for each number of clients in --sweep, both sides,
    --sweep-seconds each."""
    curve = []
    for clients in args.sweep:
        point = argparse.Namespace(**{**vars(args), "clients": clients, "seconds": args.sweep_seconds})
        curve.append({"clients": clients, **{side: throughput(side, point, spec, conn, service_pid) for side in CLIENTS}})
        print(f"sweep: {clients} clients: " + ", ".join(
            f"{side} {curve[-1][side]['searches_per_s']:.1f}/s" for side in CLIENTS), flush=True)
    return curve


# --- report ---------------------------------------------------------------------------------

def versions(conn):
    server, pg_vision, pgvector = conn.execute(
        "SELECT current_setting('server_version'), "
        "(SELECT extversion FROM pg_extension WHERE extname = 'pg_vision'), "
        "(SELECT extversion FROM pg_extension WHERE extname = 'vector')").fetchone()
    with open(os.path.join(photos.REPO, "scripts", "versions.env")) as f:
        ort_pinned = next(line.split("=", 1)[1].strip() for line in f if line.startswith("ONNXRUNTIME_VERSION="))
    found = {"postgres": server, "pg_vision": pg_vision, "pgvector": pgvector,
             "onnxruntime (pg_vision, scripts/versions.env)": ort_pinned, "python": platform.python_version()}
    for package in ("onnxruntime", "pillow", "numpy", "fastapi", "uvicorn", "python-multipart", "psycopg", "pgvector"):
        found[f"{package} (service)"] = importlib.metadata.version(package)
    return found


def print_stats(title, figures):
    print(f"\n{title}")
    print(f"  {'ms':24} {'p50':>8} {'p95':>8} {'p99':>8} {'mean':>8}")
    for name, s in figures.items():
        print(f"  {name:24} {s['p50']:8.2f} {s['p95']:8.2f} {s['p99']:8.2f} {s['mean']:8.2f}")


def print_split(lat, split):
    """Where each side's time goes, p50s; for the service also what its steps leave of the
    client's time (HTTP, multipart parsing, JSON, the hop to the thread pool), roughly."""
    print("\nwhere the time goes, p50 ms, measured on the latency run's searches")
    for side, steps in split.items():
        figures = ", ".join(f"{step} {s['p50']:.2f}" for step, s in steps.items())
        print(f"  {side:10} client {lat[side]['p50']:.2f}: {figures}")
    rest = lat["service"]["p50"] - sum(s["p50"] for s in split["service"].values())
    print(f"  service rest (HTTP, multipart, JSON, thread pool), client p50 minus the steps' p50s: ~{rest:.2f}")


def print_throughput(figures):
    print(f"\nthroughput: {figures['pg_vision']['clients']} client processes per side for "
          f"{figures['pg_vision']['seconds']:g} s each, pg_vision first")
    print(f"  {'':10} {'searches':>9} {'per s':>8} {'p50 ms':>8} {'p95 ms':>8} {'CPU busy':>9} {'steal':>6} "
          f"{'serving cores':>14} {'serving CPU ms/search':>22} {'clients CPU':>12}")
    for side in CLIENTS:
        f = figures[side]
        print(f"  {side:10} {f['searches']:9d} {f['searches_per_s']:8.1f} {f['latency_ms']['p50']:8.1f} "
              f"{f['latency_ms']['p95']:8.1f} {f['machine_cpu_busy_percent']:8.0f}% {f['cpu_steal_percent']:5.1f}% "
              f"{f['serving_cpu_cores']:14.2f} {f['serving_cpu_ms_per_search']:22.1f} {f['client_cpu_percent']:11.1f}%")
    print(f"  clients per serving process: pg_vision {figures['pg_vision']['clients_per_server_process']}, "
          f"service {figures['service']['clients_per_server_process']}")
    print("  (CPU busy: the whole machine; serving cores: CPU seconds per second of the side's serving processes,\n"
          "  of which searches/s follow when other work competes for the cores; clients CPU: share of the machine)")


def measure(args, image):
    """Builds the catalogue, runs the service and both phases: every figure, in one dict."""
    with open(os.path.join(photos.state_dir(), "port")) as f:
        pg_port = int(f.read().strip())
    spec = {"pg_port": pg_port, "http_port": args.port, "threads": args.threads, "image": image}
    prepare_database()
    with psycopg.connect(dsn(pg_port), autocommit=True) as conn:
        register_vector(conn)
        build_s = build_table(conn, args.rows)
        print(f"setup: {TABLE}, {args.rows} rows + HNSW index in {build_s:.1f} s")
        query_vector = conn.execute(f"SELECT embed_{MODEL}(%b)", [image]).fetchone()[0].to_numpy()
        found = {"versions": versions(conn), "plans": plans(conn, image, query_vector)}
        with running_service(args, pg_port, model_dir(conn)) as service:
            print(f"service: pid {service.pid}, {args.workers} uvicorn workers on port {args.port}")
            lat, split, agree = latency(args, spec)
            runs = {side: throughput(side, args, spec, conn, service.pid) for side in CLIENTS}
            curve = sweep(args, spec, conn, service.pid)
        ceiling = ceilings(conn, image, model_dir(conn), lat, split, runs)
    return {**found, "ceilings": ceiling, "agreement": agree, "search_sql": SEARCH_SQL, "sweep": curve,
            "latency_ms": lat, "latency_ratio_service_over_pg_vision": lat["service"]["p50"] / lat["pg_vision"]["p50"],
            "profile_ms": split, "throughput": runs,
            "throughput_ratio_pg_vision_over_service": runs["pg_vision"]["searches_per_s"] / runs["service"]["searches_per_s"]}


def report(settings, r):
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))
    print("plans: " + "; ".join(f"{side}: {nodes}" for side, nodes in r["plans"].items()))
    a = r["agreement"]
    print(f"same answer: {a['common_ids']} of {a['k']} ids in common, same order: {a['same_order']}, "
          f"largest similarity difference {a['max_similarity_difference']:.6f}")
    print_stats(f"latency, sequential, one connection each, {settings['iterations']} interleaved searches per side",
                r["latency_ms"])
    print(f"  service p50 / pg_vision p50: {r['latency_ratio_service_over_pg_vision']:.2f}")
    if r["profile_ms"]:
        print_split(r["latency_ms"], r["profile_ms"])
    print_throughput(r["throughput"])
    print(f"  pg_vision / service searches/s: {r['throughput_ratio_pg_vision_over_service']:.2f}")
    c = r["ceilings"]
    print("\nceilings: the most the ratios could be with the same ONNX file, ONNX Runtime and recipe")
    print(f"  latency: service p50 {r['latency_ms']['service']['p50']:.2f} / pg_vision decode + inference alone "
          f"{c['pg_vision_decode_plus_inference_ms']:.2f} ms = {c['latency_ratio_ceiling']:.2f}x "
          f"(2.5x needs {c['latency_ms_needed_for_2_5x']:.2f} ms)")
    batches = ", ".join(f"{b}: {ms:.2f}" for b, ms in c["inference_cpu_ms_per_image_by_batch"].items())
    print(f"  throughput: service {r['throughput']['service']['serving_cpu_ms_per_search']:.1f} CPU ms/search / "
          f"the model alone {c['inference_cpu_ms_per_image']:.2f} CPU ms/image = {c['throughput_ratio_ceiling']:.2f}x "
          f"(3x needs {c['cpu_ms_per_search_needed_for_3x']:.2f} CPU ms/search in all)")
    print(f"  the model's CPU ms per image by batch size, 1 thread: {batches}")
    if r["sweep"]:
        print("\nthroughput by number of clients (searches/s; p50 ms)")
        for point in r["sweep"]:
            print(f"  {point['clients']:3d} clients: " + ", ".join(
                f"{side} {point[side]['searches_per_s']:.1f} ({point[side]['latency_ms']['p50']:.1f} ms)"
                for side in CLIENTS))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000, help="catalogue rows")
    ap.add_argument("--iterations", type=int, default=200, help="sequential searches per side")
    ap.add_argument("--clients", type=int, default=8, help="concurrent client processes per side")
    ap.add_argument("--seconds", type=float, default=20, help="throughput window per side")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads, both sides")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="uvicorn workers")
    ap.add_argument("--port", type=int, default=0, help="the service's port (0: a free one)")
    ap.add_argument("--kernel-spread", action="store_true",
                    help="leave the service's throughput connections on the workers the kernel gives them "
                         "(default: spread evenly, see spread_evenly())")
    ap.add_argument("--profile", action="store_true", help="also show where each side's time goes")
    ap.add_argument("--sweep", type=lambda v: [int(n) for n in v.split(",") if n], default=[],
                    help="also measure throughput at each of these numbers of clients, e.g. 1,2,4,8")
    ap.add_argument("--sweep-seconds", type=float, default=10, help="throughput window per side and sweep point")
    ap.add_argument("--json", metavar="FILE", help="also save the figures as JSON")
    args = ap.parse_args()
    args.port = args.port or free_port()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `kill` still stops the service (finally blocks)

    image = photos.jpeg_1000()
    load_before, cpu_before = round(os.getloadavg()[0], 2), cpu_times()
    results = measure(args, image)
    cpu_after = cpu_times()
    settings = {"threads": args.threads, "workers": args.workers, "rows": args.rows,
                "image": f"1000x1000 JPEG q90, {len(image)} bytes", "iterations": args.iterations,
                "warmup_calls": WARMUP_CALLS, "clients": args.clients, "seconds": args.seconds,
                "service_clients_spread": "as the kernel gave them" if args.kernel_spread else "evenly",
                "sweep_seconds": args.sweep_seconds,
                "nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                # Other work on the machine skews every figure: the load and the steal show it.
                "loadavg_before": load_before, "loadavg_after": round(os.getloadavg()[0], 2),
                "cpu_steal_percent": round(100.0 * (cpu_after[1] - cpu_before[1]) / (cpu_after[2] - cpu_before[2]), 1)}
    report(settings, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, **results}, f, indent=2)
        print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
