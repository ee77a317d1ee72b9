"""Typed actions: what a control asks of the Pruner is a kind (and a layer), never a label."""

import pytest

from prunelab.explorer.actions import KINDS, Action


def test_an_action_is_its_kind_not_its_label():
    layer = Action(kind="layer", layer="reset", run=lambda: None)
    reset = Action(kind="reset", run=lambda: None)
    assert layer.by_criterion and layer.drives == "layers"
    assert not reset.by_criterion and reset.drives is None
    assert {a.kind for a in (layer, reset)} <= set(KINDS)


def test_bad_actions_are_refused():
    with pytest.raises(ValueError, match="unknown action kind 'prune'"):
        Action(kind="prune", run=lambda: None)
    with pytest.raises(ValueError, match="needs layer"):
        Action(kind="layer", run=lambda: None)
    with pytest.raises(ValueError, match="takes no layer"):
        Action(kind="global", layer="0", run=lambda: None)
    with pytest.raises(AttributeError):
        Action(kind="undo", run=lambda: None).kind = "redo"  # frozen
