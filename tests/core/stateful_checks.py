"""Helpers for tests/core/test_stateful.py: small random models that can be rebuilt exactly (a
fresh copy for loading an export or replaying a recipe), and the invariants checked after every
step, each read from the Pruner's public surface and compared with the model itself.

Every check raises AssertionError with what disagreed, so a shrunk failure names the lie.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

from core_models import bitwise_equal

CLASSES = 3


@dataclass(frozen=True)
class Spec:
    """A small model, by what builds it: ``build()`` gives the same weights and buffers each time."""

    kind: str  # "mlp" or "cnn"
    widths: tuple[int, ...]  # mlp: input and hidden widths; cnn: channels (1 first)
    norm: bool  # BatchNorm after each hidden layer
    seed: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.widths[0],) if self.kind == "mlp" else (1, 6, 6)

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        layers: list[nn.Module] = []
        for a, b in zip(self.widths, self.widths[1:]):
            if self.kind == "mlp":
                layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if self.norm else []) + [nn.ReLU()]
            else:
                layers += [nn.Conv2d(a, b, 3, padding=1)] + ([nn.BatchNorm2d(b)] if self.norm else []) + [nn.ReLU()]
        if self.kind == "mlp":
            model = nn.Sequential(*layers, nn.Linear(self.widths[-1], CLASSES))
        else:
            model = nn.Sequential(*layers, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(self.widths[-1] * 9, CLASSES))
        if self.norm:  # running statistics that are not the defaults, so a lost buffer shows
            gen = torch.Generator().manual_seed(self.seed + 1)
            with torch.no_grad():
                model.train()(torch.randn(16, *self.input_shape, generator=gen) * 2 + 0.5)
        return model.eval()


@st.composite
def specs(draw) -> Spec:
    """MLPs (input 3..10 wide, 1..3 hidden layers) and CNNs (1..2 conv layers on 1x6x6), each
    with or without BatchNorm; widths include multiples of 4 often enough for 2:4."""
    kind = draw(st.sampled_from(["mlp", "cnn"]))
    if kind == "mlp":
        widths = (draw(st.integers(3, 10)),) + tuple(draw(st.lists(st.integers(2, 12), min_size=1, max_size=3)))
    else:
        widths = (1,) + tuple(draw(st.lists(st.integers(2, 6), min_size=1, max_size=2)))
    return Spec(kind, widths, draw(st.booleans()), draw(st.integers(0, 2**16)))


def labelled(spec: Spec, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *spec.input_shape), generator=gen)
    return x, torch.randint(0, CLASSES, (n,), generator=gen)


# ---------------------------------------------------------------------------- snapshots

@dataclass
class Snapshot:
    """What a user can see of one state: the model's tensors (parameters and buffers) and the masks."""

    state: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]

    @classmethod
    def of(cls, pruner) -> "Snapshot":
        return cls({k: v.detach().clone() for k, v in pruner.model.state_dict().items()}, pruner.masks())


def assert_state_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == want.keys(), f"{what}: tensors {sorted(set(got) ^ set(want))} differ in presence"
    for k in want:
        assert bitwise_equal(got[k], want[k]), f"{what}: {k} differs"


def assert_same_snapshot(pruner, want: Snapshot, what: str) -> None:
    assert_state_equal(pruner.model.state_dict(), want.state, what)
    masks = pruner.masks()
    assert masks.keys() == want.masks.keys(), f"{what}: masked parameters {sorted(masks)} != {sorted(want.masks)}"
    for k in masks:
        assert torch.equal(masks[k], want.masks[k]), f"{what}: mask of {k} differs"


# ---------------------------------------------------------------------------- invariants

def check_weights_are_base_times_mask(pruner) -> None:
    """Each parameter is its unmasked base (``pruner.history.current.weights``) where its mask
    keeps, bit for bit, and exactly 0 where it does not; dense parameters have no mask."""
    base = pruner.history.current.weights
    masks = pruner.masks()
    params = dict(pruner.model.named_parameters())
    assert set(masks) <= set(params), f"masks for parameters the model lacks: {sorted(set(masks) - set(params))}"
    assert set(base) == set(params), "history.current.weights does not name every parameter"
    for n, p in params.items():
        m = masks.get(n)
        if m is None:
            assert bitwise_equal(p, base[n]), f"{n} has no mask but differs from its unmasked base"
            continue
        assert m.dtype == torch.bool and m.shape == p.shape, f"mask of {n}: {m.dtype} {tuple(m.shape)}"
        assert not bool(m.all()), f"{n} has a mask that keeps everything (dense parameters must be absent)"
        assert bitwise_equal(p.detach()[m], base[n][m]), f"{n}: kept entries differ from the unmasked base"
        assert bool((p.detach()[~m] == 0).all()), f"{n}: masked entries are not 0"


def check_dense_view(pruner, before: Snapshot) -> None:
    """``with pruner.dense()`` shows exactly the unmasked base, and puts the masked state back."""
    base = pruner.history.current.weights
    with pruner.dense() as model:
        for n, p in model.named_parameters():
            assert bitwise_equal(p, base[n]), f"inside dense(), {n} is not its unmasked base"
    assert_same_snapshot(pruner, before, "after dense()")


def check_sparsity(pruner) -> None:
    """sparsity() is the masked fraction of each prunable weight, masks() and mask() agree, and
    overall_sparsity() is their weighted mean."""
    sparsity, masks = pruner.sparsity(), pruner.masks()
    assert list(sparsity) == pruner.layer_names, "sparsity() must name every prunable layer, in order"
    masked_total = 0
    for layer in pruner.layers:
        mask = pruner.mask(layer.name)
        weight = layer.module.weight.detach()
        assert mask.shape == weight.shape
        if layer.weight_name in masks:
            assert torch.equal(masks[layer.weight_name], mask), f"mask('{layer.name}') != masks()"
        else:
            assert bool(mask.all()), f"layer {layer.name}: mask() prunes but masks() has no entry"
        masked = int((~mask).sum())
        masked_total += masked
        assert abs(sparsity[layer.name] - masked / mask.numel()) < 1e-9, (
            f"sparsity()[{layer.name!r}] = {sparsity[layer.name]} but {masked}/{mask.numel()} weights are masked")
        assert int((weight == 0).sum()) >= masked, f"layer {layer.name}: fewer zeros than masked weights"
    total = sum(l.params for l in pruner.layers)
    assert abs(pruner.overall_sparsity() - masked_total / total) < 1e-9


def plain_outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``model(x)`` batch by batch, no grad; the caller has checked that every module is in eval mode."""
    with torch.no_grad():
        return torch.cat([model(b) for b in x.split(batch_size)])


def check_evaluate(pruner, x: torch.Tensor, y: torch.Tensor) -> None:
    """evaluate() agrees with a plain loop over ``model(x)`` on the validation data."""
    metrics = pruner.evaluate()
    out = plain_outputs(pruner.model, x, 7)
    accuracy = int((out.argmax(1) == y).sum()) / len(y)
    loss = float(nn.functional.cross_entropy(out, y))
    assert metrics.samples == len(y)
    assert abs(metrics.accuracy - accuracy) < 1e-6, f"evaluate() says accuracy {metrics.accuracy}, model(x) {accuracy}"
    assert abs(metrics.loss - loss) <= 1e-5 * max(1.0, abs(loss)), f"evaluate() says loss {metrics.loss}, model(x) {loss}"
    masked = sum(int((~m).sum()) for m in pruner.masks().values())
    params = sum(p.numel() for p in pruner.model.parameters())
    assert (metrics.params, metrics.nonzero_params) == (params, params - masked)


def check_flags_and_buffers(pruner, flags: dict[str, bool], buffers: dict[str, torch.Tensor]) -> None:
    """Every module keeps its own train flag; no buffer changes (none of the steps here may touch one)."""
    now = {n: m.training for n, m in pruner.model.named_modules()}
    changed = sorted(n for n in flags if now.get(n) != flags[n])
    assert not changed, f"train flags changed for modules {changed}"
    got = dict(pruner.model.named_buffers())
    assert_state_equal(got, buffers, "buffers")


def outputs_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: outputs shaped {tuple(got.shape)}, expected {tuple(want.shape)}"
    tol = 1e-5 * max(1.0, float(want.abs().max()))
    diff = float((got - want).abs().max())
    assert diff <= tol, f"{what}: outputs differ by {diff:.3g} (> {tol:.3g})"
