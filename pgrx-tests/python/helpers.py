"""Helpers shared by the end-to-end test modules (fixtures are in conftest.py)."""

import contextlib
import functools
import http.server
import os
import socket
import subprocess
import threading
import time

import psycopg

import photos


def sqlstate(conn, query, params=()):
    """The SQLSTATE and message a statement fails with, or ("ok", None)."""
    try:
        conn.execute(query, params)
        return "ok", None
    except psycopg.Error as e:
        return e.sqlstate, e.diag.message_primary


def cancel_latency(conn, query, params, after):
    """Runs `query`, cancels it from another connection `after` seconds in; returns the
    seconds from the cancel to the error (None: it finished before the cancel)."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    fired = {}

    def cancel():
        time.sleep(after)
        with photos.connect() as other:
            fired["t"] = time.monotonic()
            other.execute("SELECT pg_cancel_backend(%s)", (pid,))

    th = threading.Thread(target=cancel)
    th.start()
    try:
        conn.execute(query, params)
        result = None
    except psycopg.errors.QueryCanceled:
        result = time.monotonic() - fired["t"]
    th.join()
    return result


class SystemSettings:
    """ALTER SYSTEM SET + pg_reload_conf(), waiting until new sessions see the value
    (photos.alter_system); restore() resets every setting changed through it."""

    def __init__(self):
        self.changed = set()

    def set(self, name, value):
        self.changed.add(name)
        photos.alter_system(name, value)

    def reset(self, name):
        photos.alter_system(name, None)
        self.changed.discard(name)

    def restore(self):
        for name in sorted(self.changed):
            photos.alter_system(name, None)
        self.changed.clear()


class ServerHealth:
    """The postmaster's start time and the server log's length when the tests began.
    `connect`: a superuser connection (a function of no arguments); the project's cluster by default."""

    def __init__(self, log, connect=photos.connect):
        self.log = log
        self.connect = connect
        with connect() as c:
            self.started = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        self.offset = os.path.getsize(log)

    def new_log(self):
        with open(self.log, errors="replace") as f:
            f.seek(self.offset)
            return f.read()

    def check(self):
        with self.connect() as c:
            now = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        log = self.new_log()
        crashed = [line for line in log.splitlines() if "terminated by signal" in line or "was terminated by" in line]
        assert not crashed, "a backend crashed:\n" + "\n".join(crashed[:5])
        assert now == self.started, f"the postmaster restarted (start time {self.started} -> {now})"


@functools.lru_cache(maxsize=None)
def env_sh(name):
    """A variable of scripts/env.sh (PGBIN, RUNAS, STATE, ...) as the shell scripts see it."""
    out = subprocess.run(["bash", "-c", f'. scripts/env.sh; printf %s "${{{name}}}"'], cwd=photos.REPO,
                         check=True, capture_output=True, text=True)
    return out.stdout


def as_server_user(cmd):
    """`cmd` (a list) to run as the server's user: `postgres` when we are root (env.sh's
    RUNAS, as its as_pg does), else ourselves."""
    runas = env_sh("RUNAS")
    return ["runuser", "-u", runas, "--", *cmd] if runas else list(cmd)


def port_free(port):
    """Nothing listens on 127.0.0.1:port (scripts/pg.sh's test)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def free_port(start=54320, taken=()):
    """The first port from `start` that nothing listens on and is not in `taken`, as
    scripts/pg.sh picks the project's."""
    port = start
    while port in taken or not port_free(port):
        port += 1
    return port


def wait_for(what, check, timeout=60, every=0.05):
    """Calls check() until it returns something true, and returns that; fails naming `what`
    (and check()'s last value) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s (last: {value!r})")
        time.sleep(every)


class HttpServer:
    """A local HTTP server on 127.0.0.1 (a free port) for the image-URL tests. `routes` maps a
    path to (status, body) or (status, body, headers), or to a function of the request handler
    that answers it (`handler.reply(status, body, headers)`); other paths get 404. `hits`
    counts the requests per path."""

    def __init__(self, routes):
        self.hits = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = routes.get(self.path, (404, b"not found"))
                if callable(route):
                    route(self)
                else:
                    self.reply(*route)

            def reply(self, status, body, headers=()):
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()


def restart():
    """scripts/pg.sh restart: the project's cluster, with whatever ALTER SYSTEM set."""
    subprocess.run([os.path.join(photos.REPO, "scripts", "pg.sh"), "restart"], check=True, stdout=subprocess.DEVNULL)


def workers_running(c):
    """pg_vision indexer workers running now (pg_stat_activity, on connection `c`)."""
    return c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_vision indexer'").fetchone()[0]


@contextlib.contextmanager
def indexer_workers(n):
    """The project's cluster restarted with `n` pg_vision indexer workers for database
    pg_vision (the block starts once they run), and restarted without them afterwards."""
    with photos.connect() as c:
        c.execute("ALTER SYSTEM SET pg_vision.indexer_databases = 'pg_vision'")
        c.execute(f"ALTER SYSTEM SET pg_vision.indexer_workers = {int(n)}")
    restart()
    try:
        with photos.connect() as c:
            wait_for("the indexer workers", lambda: workers_running(c) == n)
        yield
    finally:
        with photos.connect() as c:
            c.execute("ALTER SYSTEM RESET pg_vision.indexer_databases")
            c.execute("ALTER SYSTEM RESET pg_vision.indexer_workers")
        restart()
