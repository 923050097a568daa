"""Fixtures for the end-to-end tests: the project's cluster (scripts/pg.sh) with and
without pg_vision in shared_preload_libraries, connections as the superuser and as an
ordinary role, server settings changed with ALTER SYSTEM and restored, and a watch on the
server's health (no backend may crash, the postmaster must never restart).

Shared helpers that are not fixtures are in helpers.py; photos, the connection and the
cluster's start/restart come from scripts/photos.py."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import photos  # noqa: E402
from helpers import ServerHealth, SystemSettings  # noqa: E402

# An ordinary role: LOGIN, no superuser, nothing granted beyond what PUBLIC has.
HOSTILE_ROLE = "pgv_hostile"


@pytest.fixture(scope="session")
def cluster():
    """The project's cluster with pg_vision in shared_preload_libraries and the extension
    created, by the superuser, as in production. Returns $STATE."""
    photos.server(preload=True)
    with photos.connect() as c:
        c.execute("ALTER EXTENSION pg_vision UPDATE")  # a cluster kept from an older build
    return photos.state_dir()


@pytest.fixture(scope="module")
def without_preload(cluster):
    """The cluster restarted WITHOUT shared_preload_libraries for the rest of the module,
    and restarted with it afterwards. Connections opened before are gone: request it only
    from a module's last tests, and not together with `health` (the postmaster restarts)."""
    photos.server(preload=False)
    yield
    photos.server(preload=True)


@pytest.fixture(scope="module")
def superuser(cluster):
    """One superuser connection per module (a module may restart the server)."""
    with photos.connect() as c:
        yield c


# The application role the shop's service would connect as: LOGIN, nothing granted. The
# suites that are not about privileges (cancel, parity) run as it, as an application would.
APP_ROLE = "pgv_app"


@pytest.fixture(scope="session")
def app_role(cluster):
    with photos.connect() as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone():
            c.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    return APP_ROLE


@pytest.fixture(scope="module")
def app(app_role):
    """One connection as the application role per module."""
    with photos.connect(user=app_role) as c:
        yield c


@pytest.fixture(scope="session")
def hostile_role(cluster):
    with photos.connect() as c:
        if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (HOSTILE_ROLE,)).fetchone():
            c.execute(f"DROP OWNED BY {HOSTILE_ROLE}")
        c.execute(f"DROP ROLE IF EXISTS {HOSTILE_ROLE}")
        c.execute(f"CREATE ROLE {HOSTILE_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    return HOSTILE_ROLE


@pytest.fixture
def hostile(hostile_role):
    """A fresh connection as the ordinary role."""
    with photos.connect(user=hostile_role) as c:
        yield c


@pytest.fixture
def system_settings(cluster):
    """ALTER SYSTEM SET + pg_reload_conf() for one test: .set(name, value), .reset(name);
    whatever it changed is reset (and reloaded) when the test ends."""
    s = SystemSettings()
    yield s
    s.restore()


@pytest.fixture(scope="module")
def module_settings(cluster):
    """system_settings for module-scoped fixtures: reset when the module ends."""
    s = SystemSettings()
    yield s
    s.restore()


@pytest.fixture(scope="module")
def health(cluster):
    """Fails the module if a backend died by a signal or the postmaster restarted while it ran."""
    h = ServerHealth(os.path.join(cluster, "postgres.log"))
    yield h
    h.check()
