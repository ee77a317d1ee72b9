"""``pl.explore`` builds on every zoo model the Pruner accepts (the widget only, headless; no
browser): every view is there, and it closes (issue 11: ShuffleNetV2's channel split crashed in
topology.edge_norms, then in close)."""

import pytest

import prunelab as pl

from .known import cases
from .models import ZOO

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", cases("explore"))
def test_explore_builds(name):
    entry = ZOO[name]
    model = entry.build()
    ex = pl.explore(model, entry.data(), **entry.options)
    try:
        assert isinstance(ex, pl.Explorer)
        assert {"connectivity", "weights", "importance", "metrics"} <= set(ex.views)
        assert ex.pruner.model is model
    finally:
        ex.close()
