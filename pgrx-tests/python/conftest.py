"""Fixtures for the end-to-end tests: the project's cluster (scripts/pg.sh), connections
as the superuser and as an ordinary role, and a watch on the server's health (no backend
may crash, the postmaster must never restart)."""

import os
import sys

import psycopg
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import photos  # noqa: E402

# An ordinary role: LOGIN, no superuser, nothing granted beyond what PUBLIC has.
HOSTILE_ROLE = "pgv_hostile"


@pytest.fixture(scope="session")
def cluster():
    """The project's cluster with pg_vision in shared_preload_libraries and the extension
    created, by the superuser, as in production."""
    photos.server(preload=True)
    with photos.connect() as c:
        c.execute("ALTER EXTENSION pg_vision UPDATE")  # a cluster kept from an older build
    return photos.state_dir()


@pytest.fixture(scope="session")
def superuser(cluster):
    with photos.connect() as c:
        yield c


@pytest.fixture(scope="session")
def hostile_role(superuser):
    superuser.execute(f"DROP OWNED BY {HOSTILE_ROLE}" if superuser.execute(
        "SELECT 1 FROM pg_roles WHERE rolname = %s", (HOSTILE_ROLE,)).fetchone() else "SELECT 1")
    superuser.execute(f"DROP ROLE IF EXISTS {HOSTILE_ROLE}")
    superuser.execute(f"CREATE ROLE {HOSTILE_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    return HOSTILE_ROLE


@pytest.fixture
def hostile(hostile_role):
    """A fresh connection as the ordinary role."""
    with photos.connect(user=hostile_role) as c:
        yield c


class ServerHealth:
    """The postmaster's start time and the server log's length when the tests began."""

    def __init__(self, conn, log):
        self.conn, self.log = conn, log
        self.started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        self.offset = os.path.getsize(log)

    def new_log(self):
        with open(self.log, errors="replace") as f:
            f.seek(self.offset)
            return f.read()

    def check(self):
        with photos.connect() as c:
            now = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        log = self.new_log()
        crashed = [line for line in log.splitlines() if "terminated by signal" in line or "was terminated by" in line]
        assert not crashed, "a backend crashed:\n" + "\n".join(crashed[:5])
        assert now == self.started, f"the postmaster restarted (start time {self.started} -> {now})"


@pytest.fixture(scope="session")
def health(superuser, cluster):
    h = ServerHealth(superuser, os.path.join(cluster, "postgres.log"))
    yield h
    h.check()
