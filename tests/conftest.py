"""Fixtures shared by the whole suite, each with one meaning (the small models and helpers are in
core_models.py), the hypothesis profiles, and the order that runs the browser tests last.

Fixture names, one meaning each (every one is fresh per test, so no test sees another's state):

- ``mlp``: the small core MLP (core_models.make_mlp: 8 -> 16 -> 12 -> 3), a bare ``nn.Module``.
- ``mlp_data`` / ``image_data``: tiny random labelled data for the core models.
- ``any_model``: (name, model, data) for every core architecture.
- ``mlp_demo`` / ``cnn_demo``: a freshly loaded ``pl.demos.load("digits-mlp" / "digits-cnn")``.
- ``mlp_demo_pruner`` / ``cnn_demo_pruner``: a Pruner on that demo's model, validation and training
  data (the same Demo object a test gets from ``mlp_demo`` / ``cnn_demo``, when it asks for both).
- ``one_thread``: torch on one thread for the module.
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import prunelab as pl

from core_models import IMAGE, MODELS, VECTOR, make_mlp, random_data

# Hypothesis: no example database anywhere (a run depends on the code, not on what an earlier run
# found on this disk). In CI (CI set, as .ci/run does) the properties are derandomized (a fixed
# seed per test, so a failure reproduces and a run cannot go green by luck) and try more examples.
# Locally each run draws fresh examples. HYPOTHESIS_PROFILE=ci (or dev) picks one by hand.
# Tests should not set max_examples themselves, or the profile cannot raise it in CI.
settings.register_profile("dev", database=None, deadline=None, max_examples=10,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", database=None, deadline=None, max_examples=200, derandomize=True,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def mlp():
    """The small core MLP (8 -> 16 -> 12 -> 3, seeded), not a demo."""
    return make_mlp()


@pytest.fixture
def mlp_data():
    return random_data(VECTOR)


@pytest.fixture
def image_data():
    return random_data(IMAGE)


@pytest.fixture(params=sorted(MODELS))
def any_model(request):
    """(name, model, data) for every fixture architecture."""
    build, shape = MODELS[request.param]
    return request.param, build(), random_data(shape)


@pytest.fixture
def mlp_demo():
    """The digits-mlp demo, freshly loaded (its own model instance)."""
    return pl.demos.load("digits-mlp")


@pytest.fixture
def cnn_demo():
    """The digits-cnn demo, freshly loaded (its own model instance)."""
    return pl.demos.load("digits-cnn")


@pytest.fixture
def mlp_demo_pruner(mlp_demo):
    """A fresh Pruner on the digits-mlp demo, with its training data."""
    return pl.Pruner(mlp_demo.model, mlp_demo.val, train_data=mlp_demo.train)


@pytest.fixture
def cnn_demo_pruner(cnn_demo):
    """A fresh Pruner on the digits-cnn demo, with its training data."""
    return pl.Pruner(cnn_demo.model, cnn_demo.val, train_data=cnn_demo.train)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for the module: tiny models train faster so, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Browser tests last (a stable sort: the order within each part stays).

    The dependency: the browser tests' session-wide playwright driver leaves an asyncio loop marked
    as running on the main thread. Every test that builds an Explorer (tests/explorer/, and the
    Scheduler tests in tests/explorer/test_background.py) relies on there being none: the
    explorer's Scheduler would take it for a Jupyter kernel's loop and defer its work to a loop
    that never turns. tests/explorer/conftest.py checks this before each of those tests.
    """
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
