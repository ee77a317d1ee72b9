"""Importance view: per-unit scores of several criteria side by side, and their agreement."""

import numpy as np

from prunelab.explorer.analysis import rank_correlation
from prunelab.explorer.state import measure
from prunelab.explorer.views.importance import ImportanceView

from explorer_support import Sent, make_state


def test_criteria_side_by_side_with_rank_correlation(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner, layer="2")
    view = ImportanceView(mlp_demo_pruner, state)
    assert "taylor, attribution, wanda: computing" in view.caption.value
    taylor = {l.name: np.linspace(0, 1, l.units) for l in mlp_demo_pruner.layers}
    state.scores = {**state.scores, "taylor": taylor}
    magnitude = state.scores["magnitude"]["2"]
    rho = view.agreement()[("magnitude", "taylor")]
    assert abs(rho - rank_correlation(magnitude, taylor["2"])) < 1e-12
    assert f"{rho:+.2f}" in view.caption.value
    assert np.allclose(view.src.data["taylor"], taylor["2"])
    assert "attribution, wanda: computing" in view.caption.value


def test_bars_fade_with_the_share_of_a_units_weights_pruned(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner, layer="0")
    view = ImportanceView(mlp_demo_pruner, state)
    sent = Sent(view.bokeh)
    mlp_demo_pruner.prune({"0": 0.25}, granularity="structured")
    measure(mlp_demo_pruner, state)
    alpha = np.asarray(view.src.data["alpha"])
    assert (alpha < 0.2).sum() == 75 and (alpha == 1.0).sum() == 225
    assert sent.columns(view.src) == {"alpha"}
    mlp_demo_pruner.reset()


def test_failed_criteria_say_why(mlp_demo_pruner):
    state = make_state(mlp_demo_pruner, layer="2")
    view = ImportanceView(mlp_demo_pruner, state)
    state.score_errors = {"attribution": "needs class targets"}
    assert "attribution: unavailable (needs class targets)" in view.caption.value


def test_rank_correlation():
    a = np.array([1.0, 2, 3, 4, 5])
    assert rank_correlation(a, a * 10) == 1.0
    assert rank_correlation(a, -a) == -1.0
    # ties take their average rank (as scipy.stats.spearmanr): value computed by hand
    assert abs(rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) - 0.9486832980505138) < 1e-12
    assert np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))
