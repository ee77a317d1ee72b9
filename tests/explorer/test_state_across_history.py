"""What the explorer shows does not depend on what was done before: found when the explorer tests
stopped sharing one mutable explorer (tests/explorer/conftest.py).

Both were bugs: the scores of weights seen before were not shown again after reset or undo (the
Fine-tune panel's "taylor, attribution: computing..." that never ended), and a choice that changed
nothing made the controls take the next change from Python for their own.
"""

import pytest

import prunelab as pl


@pytest.fixture
def fresh_explorer():
    ex = pl.explore("digits-mlp")
    ex.wait()
    yield ex
    ex.close()


def test_scores_survive_going_back_across_new_weights(fresh_explorer):
    ex = fresh_explorer
    every = set(ex.state.scores)
    assert every == {"magnitude", "taylor", "attribution", "wanda"}
    ex.pruner.set_weights({n: p.detach() * 0.5 for n, p in ex.pruner.model.named_parameters()})
    ex.wait()
    assert set(ex.state.scores) == every
    ex.pruner.reset()  # back to the original weights
    ex.wait()
    assert set(ex.state.scores) == every


def test_controls_follow_python_after_a_choice_that_changed_nothing(fresh_explorer):
    ex = fresh_explorer
    ex.controls.criterion.value = "random"     # dense: nothing to re-apply
    ex.controls.criterion.value = "magnitude"
    ex.pruner.prune(0.3, criterion="random", granularity="structured")
    assert ex.controls.criterion.value == "random" and ex.controls.granularity.value == "structured"
    assert ex.state.criterion == "random"
