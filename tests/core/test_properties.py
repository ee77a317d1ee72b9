"""Properties over random small MLP and CNN architectures (hypothesis).

For any architecture and amount: the sparsity asked for is met exactly, reset() restores the
weights bit for bit, structured pruning removes whole units (and everything that exists only for
them), and evaluate() agrees with a plain evaluation loop.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from core_models import assert_same_state, state_of
from prunelab import Pruner

# examples, seed and deadline come from the profile in tests/conftest.py (more examples, derandomized, in CI)
SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow])
CLASSES = 3


@st.composite
def architectures(draw):
    """(model, inputs, targets): an MLP or a CNN (optionally with BatchNorm), with its data."""
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    if draw(st.booleans()):
        widths = [draw(st.integers(3, 10))] + draw(st.lists(st.integers(2, 12), min_size=1, max_size=3))
        layers = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(widths[-1], CLASSES))
        shape = (widths[0],)
    else:
        channels = [1] + draw(st.lists(st.integers(2, 6), min_size=1, max_size=2))
        norm = draw(st.booleans())
        layers = []
        for a, b in zip(channels, channels[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1)] + ([nn.BatchNorm2d(b)] if norm else []) + [nn.ReLU()]
        model = nn.Sequential(*layers, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(channels[-1] * 9, CLASSES))
        shape = (1, 6, 6)
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):  # non-trivial running statistics
        with torch.no_grad():
            model.train()(torch.randn(16, *shape))
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    n = draw(st.integers(4, 40))
    return model, torch.randn(n, *shape, generator=gen), torch.randint(0, CLASSES, (n,), generator=gen)


amounts = st.floats(0, 1, allow_nan=False)
criteria = st.sampled_from(["magnitude", "random", "taylor"])


@SETTINGS
@given(architectures(), amounts, criteria)
def test_unstructured_sparsity_is_exact(arch, amount, criterion):
    model, x, y = arch
    pruner = Pruner(model, (x, y))
    pruner.prune(amount, criterion=criterion)
    total = sum(l.params for l in pruner.layers)
    masked = sum(int((~pruner.mask(l.name)).sum()) for l in pruner.layers)
    assert masked == round(amount * total)
    for l in pruner.layers:  # the masks are in the weights
        assert bool((l.module.weight[~pruner.mask(l.name)] == 0).all())
    pruner.prune(amount, criterion=criterion, scope="layer")
    for l in pruner.layers:
        assert int((~pruner.mask(l.name)).sum()) == round(amount * l.params)


@SETTINGS
@given(architectures(), st.lists(st.tuples(amounts, st.sampled_from(["unstructured", "structured", "2:4"]), criteria),
                                 min_size=1, max_size=4))
def test_reset_restores_bitwise(arch, steps):
    model, x, y = arch
    before = state_of(model)
    pruner = Pruner(model, (x, y))
    for amount, granularity, criterion in steps:
        if granularity == "2:4":
            amount = 0.5
        if granularity == "structured" and not pruner.unit_groups():
            continue
        pruner.prune(amount, granularity=granularity, criterion=criterion)
    pruner.evaluate()
    pruner.reset()
    assert_same_state(model, before)
    assert pruner.masks() == {} and pruner.overall_sparsity() == 0


@SETTINGS
@given(architectures(), st.floats(0.05, 1), criteria)
def test_structured_pruning_removes_whole_units(arch, amount, criterion):
    model, x, y = arch
    pruner = Pruner(model, (x, y))
    groups = pruner.unit_groups()
    pruner.prune(amount, granularity="structured", scope="layer", criterion=criterion)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    for name in groups:
        keep = pruner.plans[name].keep if name in pruner.plans else torch.ones(pruner.layer(name).units, dtype=bool)
        gone = (~keep).nonzero().flatten()
        assert len(gone) == round(amount * len(keep))
        layer = modules[name]
        assert bool((layer.weight[gone] == 0).all()) and bool((layer.bias[gone] == 0).all())
        following = [m for n, m in model.named_children() if int(n) > int(name)]
        consumer = next(m for m in following if isinstance(m, (nn.Linear, nn.Conv2d)))
        cols = consumer.weight.reshape(consumer.weight.shape[0], len(keep), -1)  # flatten: channel-major
        assert bool((cols[:, gone] == 0).all())
        norm = following[0]
        if isinstance(norm, nn.BatchNorm2d):
            assert bool((norm.weight[gone] == 0).all()) and bool((norm.bias[gone] == 0).all())
        with pruner.dense():
            original_bias = layer.bias.detach().clone()
        assert torch.equal(layer.bias[keep], original_bias[keep])  # kept units keep their own parameters
    assert set(pruner.masks()) <= set(params)


@SETTINGS
@given(architectures(), amounts)
def test_evaluate_agrees_with_a_plain_loop(arch, amount):
    model, x, y = arch
    pruner = Pruner(model, (x, y), batch_size=8)
    for a in (amount, amount / 2, 0.0):
        pruner.prune(a)
        m = pruner.evaluate()
        with torch.no_grad():
            out = torch.cat([model(b) for b in x.split(8)])
        pred = out.argmax(1)
        assert m.accuracy == pytest.approx(float((pred == y).float().mean()))
        assert m.loss == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-5, abs=1e-6)
        for c in range(CLASSES):
            if (y == c).any():
                assert m.per_class[c] == pytest.approx(float((pred[y == c] == c).float().mean()))
        assert m.samples == len(x)
        assert m.nonzero_params == sum(p.numel() for p in model.parameters()) - sum(
            int((~k).sum()) for k in pruner.masks().values())
