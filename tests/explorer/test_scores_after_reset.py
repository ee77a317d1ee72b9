"""After new weights (fine-tune, Iterate) and then reset, the views get the scores of the original
weights back: no "taylor, attribution: computing..." forever."""

from __future__ import annotations


def test_reset_after_new_weights_shows_every_criterions_scores_again(explorer):
    ex = explorer
    ex.pruner.reset()
    ex.wait()
    assert {"taylor", "attribution"} <= set(ex.state.scores)
    ex.pruner.set_weights({n: p.detach() * 0.5 for n, p in ex.pruner.model.named_parameters()})  # as fine-tune does
    ex.wait()
    ex.pruner.reset()
    ex.wait()
    assert {"taylor", "attribution"} <= set(ex.state.scores)
    assert "computing" not in ex.views["importance"].caption.value
    assert ex.state.busy == ""
