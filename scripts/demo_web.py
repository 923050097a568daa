#!/usr/bin/env python3
"""The demo's search page: search the shop catalogue by uploading a photo (or by words,
when the catalogue has vectors of a model with a text tower), served on localhost.

The web tier is what the shop's .NET service would be, and no more: it connects as an
ordinary application role (LOGIN, no superuser; pgv_app by default), passes the uploaded
bytes to PostgreSQL as a bytea parameter and runs README's recommended search query (the
MATERIALIZED CTE form, "Search by upload"). It decodes, resizes and embeds nothing:
thumbnails are the bytes stored in product_images, sent as they are, and a bad upload is
answered with the database's own error (SQLSTATE, message, hint).

The catalogue is made by scripts/shop_demo.py (make demo), which also grants the role
SELECT on it and stores the text model's image vectors (product_image_text_vectors).

Usage: demo_web.py [--host 127.0.0.1] [--port 8765] [--dbname pg_vision] [--role pgv_app]
                   [--dsn CONNINFO]
Prints "pg_vision demo: http://HOST:PORT/" once it serves; Ctrl-C stops it.
--port 0 takes a free port; a busy --port falls back to a free one.
"""

import argparse
import contextlib
import errno
import http.server
import json
import os
import queue
import re
import signal
import sys
import threading
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import photos  # noqa: E402

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_web.html")
# The database refuses images over pg_vision.max_image_bytes (64 MB by default) with its
# own error; the web tier only refuses what it will not hold in memory at all.
MAX_BODY = 80 * 1024 * 1024
TOP_K = 8
# Hits taken from the index before keeping the best picture of each product (each product
# has several pictures; README: "one result per product").
HITS = 40
APPLICATION_NAME = "pg_vision demo web"
# Searches and pictures go through separate connections: a search never waits behind
# thumbnails, and lands on a backend that has loaded the model at its first search (a
# backend loads it once, about 0.1 s). Two search connections: the machine this was
# measured on has two cores.
SEARCH_POOL_SIZE = 2
MEDIA_POOL_SIZE = 4

# Both searches end alike: of their HITS nearest images (`hits`: id, product_id, distance),
# one row per product, the nearest first, joined to products.
ONE_ROW_PER_PRODUCT = """
     best AS (SELECT DISTINCT ON (product_id) id, product_id, distance
                FROM hits ORDER BY product_id, distance)
SELECT p.name, p.sku, p.price::text, b.id::text AS image_id, 1 - b.distance AS similarity
  FROM best b JOIN products p ON p.id = b.product_id
 ORDER BY b.distance
 LIMIT %(k)s"""

# README's recommended query ("Search by upload"): the upload embedded once in a
# MATERIALIZED CTE read by InitPlans, the HNSW index ordering the images, then one row per
# product, joined to products. %(upload)b is the upload, a binary bytea parameter.
SEARCH_BY_UPLOAD = f"""
WITH q AS MATERIALIZED (SELECT embed_efficientnet(%(upload)b) AS v),
     hits AS (SELECT id, product_id, embedding_efficientnet <=> (SELECT v FROM q) AS distance
                FROM product_images
               ORDER BY embedding_efficientnet <=> (SELECT v FROM q)
               LIMIT {HITS}),{ONE_ROW_PER_PRODUCT}"""

# The same for words, on the text model's image vectors (exact scan: the side table holds
# vectors of any dimension, which HNSW cannot index; a demo catalogue is small).
SEARCH_BY_TEXT = f"""
WITH q AS MATERIALIZED (SELECT embed_text(%(model)s, %(text)s) AS v),
     hits AS (SELECT t.image_id AS id, i.product_id, t.embedding <=> (SELECT v FROM q) AS distance
                FROM product_image_text_vectors t JOIN product_images i ON i.id = t.image_id
               WHERE t.model = %(model)s
               ORDER BY t.embedding <=> (SELECT v FROM q)
               LIMIT {HITS}),{ONE_ROW_PER_PRODUCT}"""

# The pictures a visitor can pick: each product's first (original) picture.
CATALOGUE = """
SELECT DISTINCT ON (p.sku) i.id::text, p.name, p.sku
  FROM products p JOIN product_images i ON i.product_id = p.id
 ORDER BY p.sku, i.position"""

THUMBNAIL = "SELECT image, (image_info(image)).format FROM product_images WHERE id = %s::uuid"
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
        "BMP": "image/bmp", "TIFF": "image/tiff"}

# The model whose vectors the catalogue holds for text search, and what pg_vision_models()
# says of it (a random-weight fixture must be labelled as one on the page).
TEXT_MODEL = """
SELECT m.name, m.description
  FROM pg_vision_models() m
 WHERE m.available
   AND m.name = (SELECT model FROM product_image_text_vectors GROUP BY model ORDER BY count(*) DESC LIMIT 1)"""


def is_fixture(name, description):
    """A model with random weights, by its manifest's own words or its name."""
    return name.endswith("_fixture") or bool(re.search(r"random weights|fixture", description or "", re.I))


class Pool:
    """A few connections as the application role, reused across requests (a new
    connection per request would reload the model in a new backend every time)."""

    def __init__(self, conninfo, size):
        self.conninfo = conninfo
        self.idle = queue.LifoQueue()
        self.slots = threading.BoundedSemaphore(size)

    def _connect(self):
        return psycopg.connect(self.conninfo, autocommit=True, application_name=APPLICATION_NAME)

    @contextlib.contextmanager
    def connection(self):
        with self.slots:
            try:
                conn = self.idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            try:
                yield conn
            finally:
                if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.close()
                else:
                    self.idle.put(conn)

    def run(self, query, params=()):
        """(rows, ms the database took: the query's round trip). A connection the server
        dropped (a restart) is replaced once; errors of the query itself (a bad upload)
        propagate at once, never run twice."""
        for attempt in (1, 2):
            with self.connection() as conn:
                try:
                    t0 = time.perf_counter()
                    rows = conn.execute(query, params).fetchall()
                    return rows, (time.perf_counter() - t0) * 1e3
                except psycopg.OperationalError:
                    if attempt == 2 or not conn.closed:
                        raise
            self.drop_idle()  # the server went away: its other connections are gone too

    def drop_idle(self):
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                return


def db_error(e):
    """The database's error as the page shows it."""
    diag = e.diag
    return {"sqlstate": e.sqlstate, "message": diag.message_primary or str(e).strip(),
            "detail": diag.message_detail, "hint": diag.message_hint}


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "pg_vision-demo"
    protocol_version = "HTTP/1.1"

    # --- routes ----------------------------------------------------------------------

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/":
            with open(PAGE, "rb") as f:
                self.send(200, f.read(), "text/html; charset=utf-8")
        elif path == "/api/info":
            self.guarded(self.info)
        elif path.startswith("/image/"):
            self.guarded(lambda: self.thumbnail(path[len("/image/"):]))
        else:
            self.send_json(404, {"error": {"message": f"no such page: {path}"}})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path == "/api/search":
            self.guarded(self.search_upload)
        elif path == "/api/search-text":
            self.guarded(self.search_text)
        else:
            self.send_json(404, {"error": {"message": f"no such endpoint: {path}"}})

    def info(self):
        catalogue, _ = self.server.media.run(CATALOGUE)
        text = self.server.text_model()
        self.send_json(200, {
            "catalogue": [{"image_id": i, "name": n, "sku": s} for i, n, s in catalogue],
            "image_model": "efficientnet",
            "text_model": text,
            "role": self.server.role,
        })

    def thumbnail(self, image_id):
        if not re.fullmatch(r"[0-9a-f-]{36}", image_id):
            return self.send_json(404, {"error": {"message": "not an image id"}})
        rows, _ = self.server.media.run(THUMBNAIL, (image_id,))
        if not rows or rows[0][0] is None:
            return self.send_json(404, {"error": {"message": "no such image"}})
        data, fmt = rows[0]
        self.send(200, bytes(data), MIME.get((fmt or "").upper(), "application/octet-stream"),
                  {"Cache-Control": "max-age=3600"})

    def search_upload(self):
        upload = self.body()
        if upload is None:
            return
        rows, ms = self.server.search.run(SEARCH_BY_UPLOAD, {"upload": upload, "k": TOP_K})
        self.send_json(200, {"results": results(rows), "db_ms": ms, "bytes": len(upload),
                             "model": "efficientnet"})

    def search_text(self):
        body = self.body()
        if body is None:
            return
        text = json.loads(body or b"{}").get("text", "")
        model = self.server.text_model()
        if not model:
            return self.send_json(404, {"error": {"message": "no model with a text tower has vectors in this catalogue"}})
        rows, ms = self.server.search.run(SEARCH_BY_TEXT, {"model": model["name"], "text": text, "k": TOP_K})
        self.send_json(200, {"results": results(rows), "db_ms": ms, "model": model["name"],
                             "fixture": model["fixture"]})

    # --- plumbing --------------------------------------------------------------------

    def guarded(self, handler):
        """Runs a route; the database's errors go to the page, and nothing stops the server."""
        try:
            handler()
        except psycopg.Error as e:
            # An error of the query (a bad upload) has a SQLSTATE; a lost server has none.
            status = 422 if e.sqlstate else 503
            self.send_json(status, {"error": db_error(e)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a bug in the page's server: say it, keep serving
            self.log_error("%s: %s", type(e).__name__, e)
            self.send_json(500, {"error": {"message": f"{type(e).__name__}: {e}"}})

    def body(self):
        """The request's bytes, or None once it has answered 411/413."""
        length = self.headers.get("Content-Length")
        if length is None:
            self.send_json(411, {"error": {"message": "Content-Length required"}})
            return None
        length = int(length)
        if length > MAX_BODY:
            self.close_connection = True  # the body is not read
            self.send_json(413, {"error": {"message": f"upload of {length} bytes is over the page's "
                                                      f"{MAX_BODY // (1024 * 1024)} MB"}})
            return None
        return self.rfile.read(length)

    def send(self, status, data, content_type, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status, obj):
        self.send(status, json.dumps(obj).encode(), "application/json")

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            super().log_message(fmt, *args)


def results(rows):
    return [{"name": n, "sku": s, "price": p, "image_id": i, "similarity": float(sim)} for n, s, p, i, sim in rows]


class DemoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, dsn, role, quiet):
        super().__init__(address, Handler)
        self.search, self.media = Pool(dsn, SEARCH_POOL_SIZE), Pool(dsn, MEDIA_POOL_SIZE)
        self.role, self.quiet = role, quiet
        self._text_model = None

    def text_model(self):
        """{name, description, fixture} of the text search model, or None; asked once."""
        if self._text_model is None:
            try:
                rows, _ = self.media.run(TEXT_MODEL)
            except psycopg.errors.UndefinedTable:  # a catalogue without text vectors
                rows = []
            self._text_model = ({"name": rows[0][0], "description": rows[0][1],
                                 "fixture": is_fixture(*rows[0])} if rows else False)
        return self._text_model or None


def default_dsn(dbname, role):
    """The project's cluster over TCP on the loopback, as an application connects."""
    with open(os.path.join(photos.state_dir(), "port")) as f:
        port = f.read().strip()
    return f"host=127.0.0.1 port={port} dbname={dbname} user={role}"


def check(dsn):
    """(role, 'on' if superuser) of the page's connections, failing now, clearly, if the
    server, the role, the catalogue or the role's grants are missing."""
    with psycopg.connect(dsn) as conn:
        user, superuser = conn.execute("SELECT current_user, current_setting('is_superuser')").fetchone()
        conn.execute("SELECT 1 FROM products, product_images LIMIT 1")
    return user, superuser


def bind(host, port, dsn, role, quiet):
    try:
        return DemoServer((host, port), dsn, role, quiet)
    except OSError as e:
        if e.errno != errno.EADDRINUSE or port == 0:
            raise
        print(f"port {port} is busy: taking a free one", file=sys.stderr)
        return DemoServer((host, 0), dsn, role, quiet)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--dbname", default=os.environ.get("PGDATABASE", "pg_vision"))
    ap.add_argument("--role", default="pgv_app", help="the application role to connect as")
    ap.add_argument("--dsn", help="connection string (default: the project's cluster as --role)")
    ap.add_argument("--quiet", action="store_true", help="no request log")
    args = ap.parse_args()
    dsn = args.dsn or default_dsn(args.dbname, args.role)
    try:
        user, superuser = check(dsn)
    except psycopg.Error as e:
        print(f"demo_web.py: {e.diag.message_primary or str(e).strip()}\n"
              f"  (connecting with: {dsn}; `make demo` or scripts/shop_demo.py makes the catalogue, the role and "
              f"its grants)", file=sys.stderr)
        return 1
    if superuser == "on":
        print(f"warning: connected as {user}, a superuser; the demo means to use an application role",
              file=sys.stderr)
    # Ctrl-C stops it even when started where SIGINT was ignored (a background job); so does
    # a plain kill.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = bind(args.host, args.port, dsn, user, args.quiet)
    host, port = server.server_address[:2]
    print(f"pg_vision demo: http://{host}:{port}/   (as role {user}, database {args.dbname}; Ctrl-C stops it)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
