"""A model file that is not the one its manifest declares (half copied, or another model's
weights under its name) is refused with a clear error, and pg_vision_models() says why,
before ONNX Runtime ever reads it (issue 12: the manifest's onnx_sha256)."""

import json
import os
import shutil

import pytest

import photos
from helpers import sqlstate

pytestmark = pytest.mark.usefixtures("health")

REPO_MODELS = os.path.join(photos.REPO, "models")


@pytest.fixture
def model_dir(cluster, superuser):
    """An empty model directory of its own, set for the superuser's session."""
    d = os.path.join(cluster, "checksum_models")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    shutil.copy(os.path.join(REPO_MODELS, "efficientnet.json"), d)
    superuser.execute("SELECT set_config('pg_vision.model_dir', %s, false)", (d,))
    yield d
    superuser.execute("RESET pg_vision.model_dir")
    superuser.execute("SELECT pg_vision_unload()")


def install(d, data):
    with open(os.path.join(d, "efficientnet-lite0.onnx"), "wb") as f:
        f.write(data)
    os.system(f"chmod -R a+rX {d}")


def listing(conn):
    return conn.execute(
        "SELECT available, problem FROM pg_vision_models() WHERE name = 'efficientnet'"
    ).fetchone()


def weights(name):
    with open(os.path.join(REPO_MODELS, name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("case", ["half copied", "another model's weights"])
def test_a_file_that_does_not_match_its_manifest_is_refused(superuser, model_dir, case):
    lite0 = weights("efficientnet-lite0.onnx")
    install(model_dir, lite0[: len(lite0) // 2] if case == "half copied" else weights("efficientnet-lite2.onnx"))
    available, problem = listing(superuser)
    assert not available and "does not match the sha256 in its manifest" in problem, problem
    state, message = sqlstate(superuser, "SELECT embed_efficientnet(%s)", (photos.jpeg_1000(),))
    assert state == "F0000", (state, message)
    assert "efficientnet-lite0.onnx does not match the sha256 in its manifest" in message, message


def test_the_right_file_loads_and_a_manifest_without_a_checksum_is_not_checked(superuser, model_dir):
    install(model_dir, weights("efficientnet-lite0.onnx"))
    assert listing(superuser) == (True, None)
    assert superuser.execute("SELECT vector_dims(embed_efficientnet(%s))", (photos.jpeg_1000(),)).fetchone()[0] == 1280
    manifest = json.load(open(os.path.join(model_dir, "efficientnet.json")))
    del manifest["onnx_sha256"]
    json.dump(manifest, open(os.path.join(model_dir, "efficientnet.json"), "w"))
    install(model_dir, weights("efficientnet-lite2.onnx")[:1000])
    assert listing(superuser) == (True, None)  # nothing declared, nothing to compare
