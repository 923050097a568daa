"""Helpers shared by the end-to-end test modules (fixtures are in conftest.py)."""

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
