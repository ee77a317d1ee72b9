"""Every matrix weight of every zoo model is pruned (a layer) or named in ``skipped`` with a
reason: nothing is silently left dense (issue 11: GPT-2's Conv1D were neither, so "50%" pruned
1.4% of the model while overall_sparsity() said 0.5)."""

import pytest
import torch

from .known import cases
from .models import ZOO
from .support import matrix_weights, named_by, pruner_for

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", cases("found"))
def test_every_matrix_weight_is_a_layer_or_skipped_with_a_reason(name):
    model, _, pruner = pruner_for(ZOO[name])
    covered = named_by(pruner)
    missing = sorted(set(matrix_weights(model)) - set(covered))
    assert not missing, f"neither pruned nor in skipped: {missing}"
    for key, reason in pruner.skipped.items():
        assert isinstance(reason, str) and len(reason) > 10, (key, reason)
    # a layer's weight is a real parameter of the model, with the shape the layer reports
    params = dict(model.named_parameters())
    for layer in pruner.layers:
        assert params[layer.weight_name].numel() == layer.params
    # recurrent weights are prunable layers, not skipped (issue 11: weight_ih_l*, weight_hh_l*)
    recurrent = [n for n, m in model.named_modules() if isinstance(m, torch.nn.RNNBase)]
    for module in recurrent:
        for param in (f"{module}.weight_ih_l0", f"{module}.weight_hh_l0"):
            assert covered.get(param) == "layer", f"{param}: {covered.get(param)}"
