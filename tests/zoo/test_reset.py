"""``reset()`` gives back every parameter and buffer bit for bit, after pruning of each kind,
gradient scoring (taylor runs the model with gradients) and measuring."""

import pytest

from core_models import assert_same_state, state_of

from .known import cases
from .models import ZOO
from .support import pruner_for

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", cases("reset"))
def test_reset_restores_parameters_and_buffers_bit_for_bit(name):
    model, _, pruner = pruner_for(ZOO[name])
    before = state_of(model)
    training = {n: m.training for n, m in model.named_modules()}
    pruner.prune(0.5, criterion="taylor")
    pruner.evaluate()
    if not set(pruner.structured_blocked) >= set(pruner.layer_names):
        pruner.prune(0.3, granularity="structured")
        pruner.evaluate()
    pruner.reset()
    assert not pruner.plans
    assert_same_state(model, before)
    assert {n: m.training for n, m in model.named_modules()} == training
