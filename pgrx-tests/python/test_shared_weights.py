"""Shared weights (issue 12 part 5): one copy of a model's weights for every backend.

scripts/models.sh prepares, next to each installed ONNX file, a graph optimised for this
ONNX Runtime and CPU whose weights (prepacked ones included) are in a data file that ONNX
Runtime maps, plus a sidecar saying for which version, CPU and weights (core/src/prepared.rs).
  - 8 connections of an ordinary role embedding with EfficientNet-Lite0 add at most 150 MB of
    PSS together (each holding its own copy: about 250 MB), and the budget counts the shared
    data file once, whatever the number of backends mapping it, until the last one lets go;
  - a sidecar that does not match (another ONNX Runtime version) falls back to the plain file,
    with a LOG line saying why, and the same vectors;
  - a model replaced by rename (new weights, manifest, prepared files) is loaded again by a
    backend that held the old one, at its next call, without disturbing it;
  - under a tight budget, connections are admitted by their private bytes once one maps the
    shared file, and the first that does not fit gets SQLSTATE 53200 naming the budget (with
    sharing off, each counts the whole model: fewer fit).
"""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import psycopg
import pytest

import photos
from helpers import wait_for

pytestmark = pytest.mark.usefixtures("health")

MB = 1e6
CONNECTIONS = 8
PSS_BOUND_MB = 150  # the goal for 8 connections (248 MB without sharing)
DATA_FILE = "efficientnet-lite0.shared.onnx.data"
REPO_MODELS = os.path.join(photos.REPO, "models")
PREPARE = [sys.executable, os.path.join(photos.REPO, "scripts", "prepare_shared_weights.py")]


def pss(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


def vector(conn, image):
    text = conn.execute("SELECT embed_efficientnet(%s)::text", (image,)).fetchone()[0]
    return np.array(json.loads(text), dtype=np.float64)


def of(conn, pid):
    """(shared_file, shared_bytes, bytes) of backend `pid`'s efficientnet row, read on `conn`
    (pg_vision_memory shows other backends' rows to superusers only)."""
    return conn.execute(
        "SELECT shared_file, shared_bytes, bytes FROM pg_vision_memory WHERE pid = %s AND model = 'efficientnet'", (pid,)
    ).fetchone()


def mine(conn):
    """`of` this connection's own backend."""
    return of(conn, conn.info.backend_pid)


def test_eight_connections_share_one_copy_and_the_budget_counts_it_once(superuser, app_role):
    image = photos.jpeg_1000()
    superuser.execute("SELECT pg_vision_unload()")
    conns = [photos.connect(user=app_role) for _ in range(CONNECTIONS)]
    try:
        pids = []
        for c in conns:
            # ONNX Runtime's library and environment first (a tiny model), so the
            # difference below is EfficientNet's alone.
            c.execute("SELECT vector_dims(embed_text('clip_fixture', 'a dress'))").fetchone()
            pids.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
        before = sum(pss(p) for p in pids)
        for c in conns:
            assert c.execute("SELECT vector_dims(embed_efficientnet(%s))", (image,)).fetchone()[0] == 1280
        added = (sum(pss(p) for p in pids) - before) / MB
        assert added <= PSS_BOUND_MB, f"{CONNECTIONS} connections added {added:.1f} MB of PSS"

        rows = superuser.execute(
            "SELECT shared_file, shared_bytes, bytes FROM pg_vision_memory WHERE model = 'efficientnet' AND pid = ANY(%s)",
            (pids,),
        ).fetchall()
        assert len(rows) == CONNECTIONS
        assert {r[0] for r in rows} == {DATA_FILE}, rows
        shared = rows[0][1]
        assert all(r[1] == shared for r in rows) and shared > 15 * MB, rows
        # The budget: private bytes per backend, each shared file once.
        every = superuser.execute("SELECT shared_file, max(shared_bytes) FROM pg_vision_memory GROUP BY 1").fetchall()
        once = sum(b for f, b in every if f is not None)
        private_sum = superuser.execute("SELECT sum(bytes) FROM pg_vision_memory").fetchone()[0]
        used, private, shared_total, files = superuser.execute(
            "SELECT used, private, shared, shared_files FROM pg_vision_memory_summary"
        ).fetchone()
        assert (private, shared_total, files) == (private_sum, once, len([f for f, _ in every if f]))
        assert used == private + shared_total
        assert used < private_sum + 2 * shared, "the shared file must be counted once, not per backend"

        # Seven let go: the file is still counted, once; the last one: it is gone.
        for c in conns[1:]:
            c.close()
        wait_for(
            "the closed connections' rows to go",
            lambda: superuser.execute("SELECT count(*) = 0 FROM pg_vision_memory WHERE pid = ANY(%s)", (pids[1:],)).fetchone()[0],
        )
        assert superuser.execute(
            "SELECT shared FROM pg_vision_memory_summary"
        ).fetchone()[0] == shared_total
        conns[0].execute("SELECT pg_vision_unload('efficientnet')")
        assert superuser.execute(
            "SELECT count(*) FROM pg_vision_memory WHERE shared_file = %s", (DATA_FILE,)
        ).fetchone()[0] == 0
        assert superuser.execute("SELECT shared FROM pg_vision_memory_summary").fetchone()[0] == shared_total - shared
    finally:
        for c in conns:
            c.close()


def admitted(app_role, superuser, image, up_to):
    """Opens up to `up_to` connections of the app role, each embedding with EfficientNet, until
    one is refused: (connections that hold the model, the refusal or None). Closes them all."""
    conns, refusal = [], None
    try:
        for _ in range(up_to):
            c = photos.connect(user=app_role)
            conns.append(c)
            try:
                c.execute("SELECT vector_dims(embed_efficientnet(%s))", (image,)).fetchone()
            except psycopg.Error as e:
                refusal = e
                break
        return len(conns) - (refusal is not None), refusal
    finally:
        pids = [c.info.backend_pid for c in conns]
        for c in conns:
            c.close()
        wait_for("the connections' rows to go", lambda: superuser.execute(
            "SELECT count(*) = 0 FROM pg_vision_memory WHERE pid = ANY(%s)", (pids,)).fetchone()[0])


def test_a_tight_budget_admits_connections_by_their_private_bytes(superuser, app_role, system_settings, health):
    image = photos.jpeg_1000()
    # The sizes, under the default budget: one connection with the shared file, one with
    # the plain file (each measurement is also what the next reservation expects).
    with photos.connect(user=app_role) as c:
        c.execute("SELECT vector_dims(embed_efficientnet(%s))", (image,)).fetchone()
        pid = c.info.backend_pid
        shared_file, shared, private = of(superuser, pid)
    assert shared_file == DATA_FILE and shared > 5 * private, (shared, private)
    system_settings.set("pg_vision.shared_weights", "off")
    with photos.connect(user=app_role) as c:
        c.execute("SELECT vector_dims(embed_efficientnet(%s))", (image,)).fetchone()
        plain_pid = c.info.backend_pid
        plain_file, _, whole = of(superuser, plain_pid)
    assert plain_file is None and whole > shared
    wait_for("the two connections' rows to go", lambda: superuser.execute(
        "SELECT count(*) = 0 FROM pg_vision_memory WHERE pid IN (%s, %s)", (pid, plain_pid)).fetchone()[0])
    others = superuser.execute("SELECT used FROM pg_vision_memory_summary").fetchone()[0]

    # Room for the file and three and a half connections' private bytes, in whole MB.
    budget_mb = round((others + shared + 3.5 * private) / 2**20)
    room = budget_mb * 2**20 - others
    expect_shared = math.floor((room - shared) / private)
    expect_plain = math.floor(room / whole)
    assert expect_shared == 3 and expect_plain == 1, (budget_mb, expect_shared, expect_plain)
    system_settings.set("pg_vision.memory_budget", str(budget_mb))

    for setting, expect in (("off", expect_plain), ("on", expect_shared)):
        system_settings.set("pg_vision.shared_weights", setting)
        held, refusal = admitted(app_role, superuser, image, expect + 1)
        assert held == expect, (setting, held, refusal)
        assert isinstance(refusal, psycopg.errors.OutOfMemory), refusal  # 53200
        assert "pg_vision.memory_budget" in str(refusal) and f"({budget_mb}.0 MB)" in str(refusal), str(refusal)


@pytest.fixture
def model_dir(cluster, superuser):
    """A model directory of its own with efficientnet (lite0) and its prepared files, set for
    the superuser's session."""
    d = os.path.join(cluster, "shared_weights_models")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    shutil.copy(os.path.join(REPO_MODELS, "efficientnet.json"), d)
    shutil.copy(os.path.join(REPO_MODELS, "efficientnet-lite0.onnx"), d)
    subprocess.run(PREPARE + [os.path.join(d, "efficientnet-lite0.onnx")], check=True, stdout=subprocess.DEVNULL)
    os.system(f"chmod -R a+rX {d}")
    superuser.execute("SELECT set_config('pg_vision.model_dir', %s, false)", (d,))
    yield d
    superuser.execute("RESET pg_vision.model_dir")
    superuser.execute("SELECT pg_vision_unload()")


def replace(path, text):
    """Writes a file the way deployments must: a new file renamed over the old one."""
    with open(path + ".new", "w") as f:
        f.write(text)
    os.chmod(path + ".new", 0o644)
    os.replace(path + ".new", path)


def test_a_mismatching_sidecar_falls_back_to_the_plain_file_with_the_same_vectors(superuser, model_dir, health):
    image = photos.jpeg_1000()
    shared_vector = vector(superuser, image)
    assert mine(superuser)[0] == DATA_FILE
    sidecar = os.path.join(model_dir, "efficientnet-lite0.shared.json")
    s = json.load(open(sidecar))
    s["ort_version"] = "0.0.0"
    replace(sidecar, json.dumps(s))
    # The same connection notices the new sidecar at its next call and loads the plain file.
    plain_vector = vector(superuser, image)
    shared_file, shared_bytes, private = mine(superuser)
    assert (shared_file, shared_bytes) == (None, 0)
    assert private > 15 * MB  # its own copy of the weights, counted as its own
    assert np.abs(shared_vector - plain_vector).max() < 1e-4
    log = health.new_log()
    assert "loaded from its plain ONNX file, not its shared-weights files" in log
    assert "prepared by ONNX Runtime 0.0.0, this backend runs" in log
    # Prepared again (the sidecar matches): back to the shared file, same vectors.
    subprocess.run(PREPARE + [os.path.join(model_dir, "efficientnet-lite0.onnx")], check=True, stdout=subprocess.DEVNULL)
    assert np.abs(vector(superuser, image) - shared_vector).max() < 1e-4
    assert mine(superuser)[0] == DATA_FILE
    # The setting off: the plain file, in this session only.
    superuser.execute("SET pg_vision.shared_weights = off")
    try:
        assert np.abs(vector(superuser, image) - shared_vector).max() < 1e-4
        assert mine(superuser)[0] is None
    finally:
        superuser.execute("RESET pg_vision.shared_weights")


def test_a_model_replaced_by_rename_is_loaded_again(superuser, model_dir):
    image = photos.jpeg_1000()
    before = vector(superuser, image)
    old_bytes = mine(superuser)[1]
    # New weights under the same name (lite2's), as models.sh installs them: each file
    # written aside and renamed into place, then prepared (also by rename).
    lite2 = os.path.join(model_dir, "efficientnet-lite0.onnx")
    shutil.copy(os.path.join(REPO_MODELS, "efficientnet-lite2.onnx"), lite2 + ".new")
    os.replace(lite2 + ".new", lite2)
    # A new version of the model under the same names: lite2's recipe and weights.
    m = json.load(open(os.path.join(REPO_MODELS, "efficientnet_lite2.json")))
    m.update(name="efficientnet", onnx_file="efficientnet-lite0.onnx")
    replace(os.path.join(model_dir, "efficientnet.json"), json.dumps(m))
    subprocess.run(PREPARE + [lite2], check=True, stdout=subprocess.DEVNULL)
    os.system(f"chmod -R a+rX {model_dir}")
    after = vector(superuser, image)
    assert np.abs(after - before).max() > 1e-2, "the backend still runs the old weights"
    shared_file, new_bytes, _ = mine(superuser)
    assert shared_file == DATA_FILE and new_bytes != old_bytes
    # A new connection computes the same vector from the new files.
    with photos.connect() as fresh:
        fresh.execute("SELECT set_config('pg_vision.model_dir', %s, false)", (model_dir,))
        assert np.abs(vector(fresh, image) - after).max() < 1e-5
