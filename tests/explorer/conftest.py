"""Fixtures for the explorer tests: the demo pruners (helpers live in explorer_support.py)."""

import pytest

import prunelab as pl


@pytest.fixture(scope="module")
def mlp_pruner():
    demo = pl.demos.load("digits-mlp")
    return pl.Pruner(demo.model, demo.val, train_data=demo.train)


@pytest.fixture(scope="module")
def cnn_pruner():
    demo = pl.demos.load("digits-cnn")
    return pl.Pruner(demo.model, demo.val, train_data=demo.train)


@pytest.fixture(scope="module")
def explorer():
    """The digits-mlp explorer, settled (one per test module)."""
    ex = pl.explore("digits-mlp")
    ex.wait()
    yield ex
    ex.close()
