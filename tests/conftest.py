"""Shared fixtures for the core tests (the models and helpers are in core_models.py)."""

import pytest
import torch

import prunelab as pl

from core_models import IMAGE, MODELS, VECTOR, make_mlp, random_data


@pytest.fixture
def mlp():
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
def pruner():
    """A fresh Pruner on the digits-mlp demo, with its training data (modules may override it)."""
    d = pl.demos.load("digits-mlp")
    return pl.Pruner(d.model, d.val, train_data=d.train)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for the module: tiny models train faster so, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Browser tests last: their session-wide playwright driver keeps an asyncio loop marked as
    running on the main thread, which other tests (and the explorer's scheduler) would take for a
    Jupyter kernel's loop."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
