"""A stateful property test that searches for lies (issue 10, "Tests").

Hypothesis drives random sequences of prune (global, per layer, threshold; unstructured,
structured, 2:4; magnitude, random, taylor), undo, redo, reset, finetune, set_weights, dense(),
invalid requests, and exports with their loads (state_dict, sparse, structured, recipe) on random
small MLPs and CNNs (some with BatchNorm). The machine keeps its own record of every state the
Pruner entered (the model's tensors and the masks), so undo and redo are checked against what
the user saw, not against the Pruner's own bookkeeping. After every step
(stateful_checks.py has the checks):

- each parameter is its unmasked base times its mask (masked entries exactly 0);
- sparsity(), masks() and mask() agree with each other and with the model;
- evaluate() agrees with a plain loop over model(x) (accuracy, loss, parameter counts);
- no module's train flag and no buffer has changed; the state is the one recorded for the
  history's cursor;
- reset() (as a step, and once more at the end) restores parameters and buffers bit for bit;
- a loaded export equals the model's state (state_dict, sparse, a replayed recipe) or its outputs
  (structured, to 1e-5).

Examples and seed come from the hypothesis profile in tests/conftest.py (derandomized in CI); the
ci profile takes about 20 s on one thread, so the test is marked slow. The structured export (its
torch.export costs ~0.2 s) runs at most once per example, when there are units to remove.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import prunelab as pl
from core_models import state_of
from stateful_checks import (Snapshot, assert_same_snapshot, assert_state_equal, check_dense_view, check_evaluate,
                             check_flags_and_buffers, check_sparsity, check_weights_are_base_times_mask, labelled,
                             outputs_close, plain_outputs, specs)

STEPS = 12
fractions = st.floats(0, 1, allow_nan=False)
criteria = st.sampled_from(["magnitude", "random", "taylor"])


def step(method):
    """A rule: it marks the machine unchecked until the invariants have passed after it, so the
    final reset check in teardown runs only on a run that has not already failed (one error per
    failing example keeps hypothesis's shrinking quick and its replays consistent)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        self.checked = False
        return method(self, *args, **kwargs)
    return run


def fits_2_4(layer) -> bool:
    return layer.module.weight[0].numel() % 4 == 0


class PrunerMachine(RuleBasedStateMachine):
    """One Pruner on one random model, driven through random steps."""

    def __init__(self):
        super().__init__()
        self.pruner = None
        self.tmp = Path(tempfile.mkdtemp(prefix="prunelab-stateful-"))
        self.files = 0
        self.structured_exported = False
        self.checked = False

    # ------------------------------------------------------------------ bookkeeping

    def _path(self, suffix: str) -> Path:
        self.files += 1
        return self.tmp / f"export{self.files}{suffix}"

    def _changed(self, what: str) -> None:
        """After a step that may record a step of history: adopt it, or check nothing changed."""
        cursor = self.pruner.history.cursor
        if cursor == self.cursor + 1:
            del self.shadow[cursor:]
            self.shadow.append(Snapshot.of(self.pruner))
            self.cursor = cursor
        else:
            assert cursor == self.cursor, f"{what} moved the history cursor from {self.cursor} to {cursor}"
            assert_same_snapshot(self.pruner, self.shadow[cursor], f"{what} recorded no step but")

    def _unchanged(self, what: str) -> None:
        assert self.pruner.history.cursor == self.cursor, f"{what} moved the history cursor"
        assert len(self.pruner.history) == len(self.shadow), f"{what} changed the history's length"
        assert_same_snapshot(self.pruner, self.shadow[self.cursor], what)

    def _base(self) -> dict[str, torch.Tensor]:
        return self.pruner.history.current.weights

    # ------------------------------------------------------------------ the model

    @initialize(spec=specs(), n_val=st.integers(6, 40), n_train=st.integers(4, 24),
                batch_size=st.sampled_from([3, 8, 1024]))
    def build(self, spec, n_val, n_train, batch_size):
        self.spec = spec
        model = spec.build()
        self.x, self.y = labelled(spec, n_val, spec.seed + 2)
        self.train = labelled(spec, n_train, spec.seed + 3)
        self.initial = state_of(model)
        self.flags = {n: m.training for n, m in model.named_modules()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.pruner = pl.Pruner(model, (self.x, self.y), train_data=self.train, batch_size=batch_size)
        assert_state_equal(model.state_dict(), self.initial, "making the Pruner")
        self.shadow, self.cursor = [Snapshot.of(self.pruner)], 0

    @invariant()
    def consistent(self):
        p = self.pruner
        if p is None:
            return
        check_flags_and_buffers(p, self.flags, self.buffers)  # first: the checks below run the model
        assert p.history.cursor == self.cursor and len(p.history) == len(self.shadow)
        assert p.can_undo == (self.cursor > 0) and p.can_redo == (self.cursor + 1 < len(self.shadow))
        assert_same_snapshot(p, self.shadow[self.cursor], "the state recorded for the history's cursor")
        check_weights_are_base_times_mask(p)
        check_sparsity(p)
        check_evaluate(p, self.x, self.y)
        self.checked = True

    def teardown(self):
        try:
            if self.pruner is not None and self.checked:
                self.pruner.reset()
                assert_state_equal(self.pruner.model.state_dict(), self.initial, "the final reset()")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ pruning

    @rule(amount=fractions, criterion=criteria, granularity=st.sampled_from(["unstructured", "structured", "2:4"]),
          scope=st.sampled_from(["global", "layer"]))
    @step
    def prune(self, amount, criterion, granularity, scope):
        p = self.pruner
        if granularity == "2:4":
            amount = 0.5 if amount >= 0.25 else 0.0
        if granularity == "structured" and not p.unit_groups():
            return
        p.prune(amount, criterion=criterion, granularity=granularity, scope=scope)
        self._changed("prune")
        if granularity == "unstructured":
            masked = {l.name: int((~p.mask(l.name)).sum()) for l in p.layers}
            if scope == "global":
                total = sum(l.params for l in p.layers)
                assert sum(masked.values()) == round(amount * total), "global amount not met exactly"
            else:
                for l in p.layers:
                    assert masked[l.name] == round(amount * l.params), f"layer {l.name}: amount not met exactly"
        elif granularity == "2:4":
            for l in p.layers:
                if fits_2_4(l):
                    plan = p.plans.get(l.name)
                    assert (plan is not None and plan.granularity == "2:4") == (amount == 0.5)
                    kept = p.mask(l.name).reshape(-1, 4).sum(1)
                    assert bool((kept <= 2).all()) if amount else True, f"layer {l.name}: not 2 of every 4"

    @rule(data=st.data(), granularity=st.sampled_from(["unstructured", "structured", "2:4"]), criterion=criteria)
    @step
    def prune_layers(self, data, granularity, criterion):
        p = self.pruner
        if granularity == "structured":
            names = sorted(p.unit_groups())
        elif granularity == "2:4":
            names = [l.name for l in p.layers if fits_2_4(l)]
        else:
            names = p.layer_names
        if not names:
            return
        chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True), label="layers")
        values = st.sampled_from([0.0, 0.5]) if granularity == "2:4" else fractions
        amounts = {n: data.draw(values, label=f"amount of {n}") for n in chosen}
        p.prune(amounts, criterion=criterion, granularity=granularity)
        self._changed("prune per layer")
        for n, a in amounts.items():
            plan = p.plans.get(n)
            if a == 0:
                assert plan is None, f"layer {n} was set to 0 but has a plan"
                continue
            assert plan is not None and plan.granularity == granularity
            units = p.layer(n).units if granularity == "structured" else p.layer(n).params
            assert int((~plan.keep).sum()) == round(a * units), f"layer {n}: its plan does not prune {a}"

    @rule(fraction=st.floats(0, 0.6), granularity=st.sampled_from(["unstructured", "structured"]))
    @step
    def prune_threshold(self, fraction, granularity):
        p = self.pruner
        if granularity == "structured" and not p.unit_groups():
            return
        biggest = max(float(self._base()[l.weight_name].abs().max()) for l in p.layers)
        threshold = fraction * biggest
        p.prune(threshold=threshold, granularity=granularity)
        self._changed("prune by threshold")
        if granularity == "unstructured":
            for l in p.layers:
                plan = p.plans.get(l.name)
                keep = plan.keep if plan is not None else torch.ones(l.shape, dtype=torch.bool)
                below = self._base()[l.weight_name].abs() < threshold
                assert torch.equal(keep, ~below), f"layer {l.name}: the threshold's plan is not |w| >= {threshold}"

    @rule(request=st.sampled_from(["amount 1.5", "negative threshold", "unknown layer", "2:4 at 0.3", "both",
                                   "unknown criterion", "unknown granularity", "threshold with taylor"]))
    @step
    def refused(self, request):
        p = self.pruner
        calls = {"amount 1.5": lambda: p.prune(1.5), "negative threshold": lambda: p.prune(threshold=-1.0),
                 "unknown layer": lambda: p.prune({"no such layer": 0.5}),
                 "2:4 at 0.3": lambda: p.prune(0.3, granularity="2:4"), "both": lambda: p.prune(0.5, threshold=0.1),
                 "unknown criterion": lambda: p.prune(0.5, criterion="magnitud"),
                 "unknown granularity": lambda: p.prune(0.5, granularity="filters"),
                 "threshold with taylor": lambda: p.prune(threshold=0.1, criterion="taylor")}
        with pytest.raises((ValueError, TypeError)):
            calls[request]()
        self._unchanged(f"a refused request ({request})")

    # ------------------------------------------------------------------ history

    @rule()
    @step
    def undo(self):
        moved = self.pruner.undo()
        assert moved == (self.cursor > 0), "undo() said it moved" if moved else "undo() did not move"
        if moved:
            self.cursor -= 1
        assert_same_snapshot(self.pruner, self.shadow[self.cursor], "undo() did not restore the step before")

    @rule()
    @step
    def redo(self):
        moved = self.pruner.redo()
        assert moved == (self.cursor + 1 < len(self.shadow))
        if moved:
            self.cursor += 1
        assert_same_snapshot(self.pruner, self.shadow[self.cursor], "redo() did not restore the step after")

    @rule()
    @step
    def reset(self):
        p = self.pruner
        p.reset()
        self._changed("reset")
        assert_state_equal(p.model.state_dict(), self.initial, "reset()")
        assert p.masks() == {} and p.plans == {} and p.weights_version == 0
        assert set(p.sparsity().values()) == {0.0}

    # ------------------------------------------------------------------ new weights

    @rule()
    @step
    def finetune(self):
        p = self.pruner
        masks = p.masks()
        result = p.finetune(1, progress=False, batch_size=8)
        self._changed("finetune")
        assert p.masks().keys() == masks.keys() and all(torch.equal(p.masks()[k], m) for k, m in masks.items())
        for n, m in masks.items():  # pruned weights stay zero in the new unmasked weights too
            assert bool((self._base()[n][~m] == 0).all()), f"finetune: {n}'s pruned weights are not 0 in its base"
        assert result.accuracy_after == p.evaluate().accuracy

    @rule(data=st.data(), scale=st.floats(-2, 2, allow_nan=False), shift=st.floats(-0.5, 0.5, allow_nan=False))
    @step
    def set_weights(self, data, scale, shift):
        p = self.pruner
        name = data.draw(st.sampled_from(sorted(self._base())), label="parameter")
        before = dict(self._base())
        new = before[name] * scale + shift
        given = new.clone()
        p.set_weights({name: given})
        self._changed("set_weights")
        base = self._base()
        assert torch.equal(base[name], new), "set_weights: the new base is not what was given"
        assert all(base[n] is before[n] or torch.equal(base[n], before[n]) for n in before if n != name)
        given.fill_(7.0)  # the caller's tensor is theirs: changing it afterwards must change nothing
        assert torch.equal(self._base()[name], new), "set_weights kept a reference to the caller's tensor"

    @rule()
    @step
    def dense_view(self):
        check_dense_view(self.pruner, self.shadow[self.cursor])
        self._unchanged("dense()")

    # ------------------------------------------------------------------ exports and loads

    @rule(sparse=st.booleans())
    @step
    def export_weights(self, sparse):
        p = self.pruner
        fmt = "sparse" if sparse else "state_dict"
        path = self._path(".safetensors")
        exported = p.export(path, format=fmt)
        self._unchanged(f"export {fmt}")
        assert exported.bytes == path.stat().st_size
        loaded = (pl.load_sparse if sparse else pl.load_state_dict)(path)
        state = p.model.state_dict()
        assert loaded.keys() == state.keys()
        for k, v in state.items():  # sparse stores the zeros it drops as +0.0: equal, not always bitwise
            assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), f"{fmt} export: {k} differs"
        fresh = self.spec.build()
        fresh.load_state_dict(loaded)
        assert torch.equal(plain_outputs(fresh, self.x, 7), plain_outputs(p.model, self.x, 7))

    def _structured_export_due(self) -> bool:
        # torch.export makes this the slowest step by far (~0.2 s): once per run, when there are units
        # to remove (structured plans, or sparsity high enough to leave silent units)
        p = self.pruner
        return not self.structured_exported and (p.overall_sparsity() >= 0.8 or any(
            plan.granularity == "structured" for plan in p.plans.values()))

    @precondition(lambda self: self.pruner is not None and self._structured_export_due())
    @rule(program=st.booleans())
    @step
    def export_structured(self, program):
        p = self.pruner
        self.structured_exported = True
        path = self._path("")
        exported = p.export(path, format="structured")
        self._unchanged("export structured")
        want = plain_outputs(p.model, self.x, 7)
        small = pl.load_structured(exported.files[0], self.spec.build())
        outputs_close(plain_outputs(small, self.x, 7), want, "structured export, loaded into a fresh model")
        for name, plan in p.plans.items():
            if plan.granularity == "structured":
                after = small.get_submodule(name).weight.shape[0]
                assert after <= max(int(plan.keep.sum()), 1), f"layer {name}: structured units were not removed"
        if program:
            module = pl.load_structured(exported.files[1])
            with torch.no_grad():
                outputs_close(module(self.x), want, "structured export's .pt2 program")

    @rule()
    @step
    def export_recipe(self):
        p = self.pruner
        path = self._path(".json")
        p.export(path, format="recipe")
        self._unchanged("export recipe")
        kinds = [s["kind"] for s in pl.load_recipe(path)["steps"]]
        last_reset = max((i for i, k in enumerate(kinds) if k == "reset"), default=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            replayed = pl.apply_recipe(self.spec.build(), path, (self.x, self.y), train_data=self.train)
        if "set_weights" not in kinds:
            assert not caught, f"replaying a faithful recipe warned: {[str(w.message) for w in caught]}"
        if "set_weights" not in kinds[last_reset:]:  # the steps since the last reset start from the originals
            assert_state_equal(replayed.model.state_dict(), p.model.state_dict(), "the replayed recipe")
            assert replayed.masks().keys() == p.masks().keys()
            assert all(torch.equal(replayed.masks()[k], m) for k, m in p.masks().items())
        else:
            assert caught, "a recipe with unrecorded weights replayed without a warning"


PrunerMachine.TestCase.settings = settings(stateful_step_count=STEPS, report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow])
TestPrunerNeverLies = pytest.mark.slow(PrunerMachine.TestCase)


# ---------------------------------------------------------------------------- beside the machine
# The machine above builds every model fully in eval mode (its plain-loop reference would move the
# running statistics of a BatchNorm left in train mode); a model whose modules do not share one train
# flag is checked here (issue 10 case 8, found by this file and fixed in core/modes.py).

def test_every_module_keeps_its_own_train_flag():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                                torch.nn.Linear(6, 3))
    model.train()
    model[1].eval()  # e.g. frozen BatchNorm statistics while the rest trains
    x, y = torch.randn(10, 4), torch.arange(10) % 3
    pruner = pl.Pruner(model, (x, y))
    pruner.prune(0.5)
    pruner.evaluate()
    assert [m.training for m in model] == [True, False, True, True]
