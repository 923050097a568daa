"""statement_timeout and pg_cancel_backend stop a long embed_images() batch within a
second: the function checks for interrupts between batches (batch_size images each).

A batch of 3000 copies of a small photo (built server-side, so nothing large crosses the
wire) takes tens of seconds; both ways of stopping it must end it with SQLSTATE 57014
less than a second after they fire, and the session stays usable."""

import time

import psycopg
import pytest

import photos
from helpers import cancel_latency

pytestmark = pytest.mark.usefixtures("health")

LONG_BATCH = """SELECT count(*) FROM unnest(embed_images('efficientnet',
    (SELECT array_agg(%s::bytea) FROM generate_series(1, 3000)), 16))"""


@pytest.fixture(scope="module")
def small_jpeg():
    return photos.encode(photos.photo("chelsea.png").convert("RGB").resize((320, 212)), "JPEG", quality=85)


@pytest.fixture(scope="module")
def session(app, small_jpeg):
    """One session of the application role with efficientnet loaded, shared by the tests in order."""
    app.execute("SELECT embed_efficientnet(%s)", (small_jpeg,))
    return app


def test_statement_timeout_stops_a_long_batch(session, small_jpeg, capsys):
    """statement_timeout = 1s: the error must come before 2 s."""
    session.execute("SET statement_timeout = '1s'")
    t0 = time.monotonic()
    try:
        with pytest.raises(psycopg.errors.QueryCanceled) as e:
            session.execute(LONG_BATCH, (small_jpeg,))
        took = time.monotonic() - t0
    finally:
        session.execute("RESET statement_timeout")
    with capsys.disabled():
        print(f"\n  statement_timeout 1s: stopped after {took:.2f} s ({e.value.sqlstate}: {e.value.diag.message_primary})")
    assert e.value.sqlstate == "57014"
    assert took < 2.0, f"stopped {took - 1:.2f} s after statement_timeout fired (limit 1 s)"


def test_pg_cancel_backend_stops_a_long_batch(session, small_jpeg, capsys):
    """pg_cancel_backend from another session, 1.5 s into the batch."""
    took = cancel_latency(session, LONG_BATCH, (small_jpeg,), after=1.5)
    with capsys.disabled():
        print(f"\n  pg_cancel_backend: stopped {took if took is None else round(took, 2)} s after the cancel")
    assert took is not None, "the batch finished before pg_cancel_backend"
    assert took < 1.0, f"stopped {took:.2f} s after pg_cancel_backend (limit 1 s)"


def test_session_and_model_usable_after_cancel(session, small_jpeg):
    assert session.execute("SELECT vector_dims(embed_image('efficientnet', %s))", (small_jpeg,)).fetchone()[0] == 1280
