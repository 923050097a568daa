#!/usr/bin/env python3
"""statement_timeout and pg_cancel_backend stop a long embed_images() batch within a
second: the function checks for interrupts between batches (batch_size images each).

A batch of 3000 copies of a small photo (built server-side, so nothing large crosses the
wire) takes tens of seconds; both ways of stopping it must end it with SQLSTATE 57014
less than a second after they fire. Usage: cancel_test.py
"""

import io
import os
import sys
import threading
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from photos import connect, photo  # noqa: E402

LONG_BATCH = """SELECT count(*) FROM unnest(embed_images('efficientnet',
    (SELECT array_agg(%s::bytea) FROM generate_series(1, 3000)), 16))"""


def small_jpeg():
    buf = io.BytesIO()
    photo("chelsea.png").convert("RGB").resize((320, 212)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def main():
    img = small_jpeg()
    with connect() as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_vision CASCADE")
        c.execute("SELECT pg_vision_warmup(ARRAY['efficientnet'])")
        # statement_timeout = 1s: the error must come before 2 s.
        c.execute("SET statement_timeout = '1s'")
        t0 = time.monotonic()
        try:
            c.execute(LONG_BATCH, (img,))
            sys.exit("FAILED: the batch finished before statement_timeout")
        except psycopg.errors.QueryCanceled as e:
            took = time.monotonic() - t0
            print(f"statement_timeout 1s: stopped after {took:.2f} s ({e.sqlstate}: {e.diag.message_primary})")
            if took >= 2.0:
                sys.exit(f"FAILED: stopped {took - 1:.2f} s after statement_timeout fired (limit 1 s)")
        c.execute("RESET statement_timeout")

        # pg_cancel_backend from another session, 1.5 s into the batch.
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        fired = {}

        def cancel():
            time.sleep(1.5)
            with connect() as other:
                fired["t"] = time.monotonic()
                other.execute("SELECT pg_cancel_backend(%s)", (pid,))

        th = threading.Thread(target=cancel)
        th.start()
        try:
            c.execute(LONG_BATCH, (img,))
            sys.exit("FAILED: the batch finished before pg_cancel_backend")
        except psycopg.errors.QueryCanceled:
            took = time.monotonic() - fired["t"]
            print(f"pg_cancel_backend: stopped {took:.2f} s after the cancel")
            if took >= 1.0:
                sys.exit(f"FAILED: stopped {took:.2f} s after pg_cancel_backend (limit 1 s)")
        th.join()
        # The session and its model are still usable.
        n = c.execute("SELECT vector_dims(embed_image('efficientnet', %s))", (img,)).fetchone()[0]
        assert n == 1280
    print("cancel test passed")


if __name__ == "__main__":
    sys.exit(main())
