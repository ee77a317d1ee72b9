"""Shared fixtures for the core tests (the models and helpers are in core_models.py)."""

import pytest

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
