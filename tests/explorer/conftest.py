"""Fixtures for the explorer tests (helpers live in explorer_support.py).

Every test starts from a clean state:
- a bare Pruner is tests/conftest.py's ``mlp_demo_pruner`` / ``cnn_demo_pruner``, fresh per test
  (building one takes a fraction of a second).
- ``explorer`` is built once per module (its background scoring takes seconds) and put back to
  where it started before each test that uses it: the dense weights, the controls' criterion,
  granularity and mode, the layer in detail, and its tabs.
"""

import asyncio

import pytest

import prunelab as pl


@pytest.fixture(autouse=True)
def no_running_event_loop():
    """The explorer tests run with no asyncio loop running on the main thread, as in a script.

    They depend on running before the browser tests (tests/conftest.py sorts those last): the
    playwright driver leaves a loop marked as running, which the explorer's Scheduler would take for
    a Jupyter kernel's and defer its work to. Fail here, by name, rather than later and obscurely.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    pytest.fail("an asyncio loop is running on the main thread: the explorer tests must run before the "
                "browser tests (see pytest_collection_modifyitems in tests/conftest.py)", pytrace=False)


class _ModuleExplorer:
    """The module's digits-mlp explorer, settled, and what it looked like then."""

    def __init__(self):
        self.ex = None
        self.build()

    def build(self):
        if self.ex is not None:
            self.ex.close()
        ex = self.ex = pl.explore("digits-mlp")
        ex.wait()
        c = ex.controls
        self.controls = {"criterion": c.criterion.value, "granularity": c.granularity.value, "mode": c.mode.value}
        self.layer = ex.state.layer
        self.scores = set(ex.state.scores)
        self.tabs = (tuple(ex.tabs.children), tuple(ex.tabs.titles))

    def restore(self):
        """Back to the starting state; a fresh explorer where that cannot be had by resetting."""
        ex = self.ex
        moved = False
        for name, value in self.controls.items():  # as a person would: through the controls
            widget = getattr(ex.controls, name)
            if widget.value != value:
                widget.value, moved = value, True
        ex.pruner.reset()
        if moved:  # a choice on a dense model changes nothing: re-measure, so the controls follow the Pruner
            ex.refresh()
        ex.state.layer = self.layer
        children, titles = self.tabs
        if tuple(ex.tabs.children) != children:
            ex.tabs.children = children
            ex.tabs.titles = titles
        ex.wait()
        if set(ex.state.scores) != self.scores:  # reset across set_weights drops background scores
            self.build()                         # (test_state_across_history.py pins that bug)
        return self.ex


@pytest.fixture(scope="module")
def _module_explorer():
    holder = _ModuleExplorer()
    yield holder
    holder.ex.close()


@pytest.fixture
def explorer(_module_explorer):
    """The module's digits-mlp explorer, back at its starting state (dense, settled) for this test."""
    ex = _module_explorer.restore()
    assert not ex.pruner.plans and ex.pruner.weights_version == 0, "the explorer's Pruner did not reset"
    assert ex.state.metrics.accuracy == ex.state.baseline.accuracy
    return ex
