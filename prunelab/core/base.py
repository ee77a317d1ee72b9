"""The Pruner: masks over a model's own weights, with history, scoring and measurement.

Mask semantics (as in torch.nn.utils.prune, without its wrappers): a mask is a boolean tensor
shaped like its parameter, True where the entry is kept. The Pruner writes ``base * mask`` into
the model's parameters in place, so the model stays an ordinary module: its forward, state_dict,
torch.save and deepcopy work unchanged and hold the pruned weights.

Side effects, all undone by ``reset()``: the model's parameter values change in place. The
Pruner keeps one copy of the original parameters, restored bit for bit by ``reset()``. While a
Pruner is in use it owns the weights: change them through it (``prune``, ``finetune``), not
behind its back.

Each call to ``prune`` sets the pruning of the layers it names (a slider, not a ratchet): setting
a layer to 0.3 after 0.5 brings weights back. Layers it does not name keep their masks.
"""

from __future__ import annotations

import contextlib
import difflib
import numbers
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch
from torch import nn

from .criteria import Criterion, ScoringContext, get_criterion
from .data import batches, first_samples, materialize
from .evaluation import Evaluator, Metrics, classification_scores, count_flops, wilson_interval
from .layers import Layer, UnitGroup, find_layers, find_unit_groups
from .checks import GRANULARITIES, SCOPES, check_fraction
from .masks import Ranking, n_of_m_mask



@dataclass(frozen=True)
class Plan:
    """How one layer is pruned now. ``keep`` is the weight keep-mask (unstructured, 2:4) or the
    unit keep-vector (structured, shared by coupled layers)."""

    granularity: str
    criterion: str
    amount: float | None
    threshold: float | None
    keep: torch.Tensor


@dataclass(frozen=True)
class _State:
    plans: Mapping[str, Plan]
    base: Mapping[str, torch.Tensor]
    base_version: int
    token: int


class BasePruner:
    """Masks over ``model``'s own weights, with history, scoring and measurement on ``val_data``.

    The workflows (retraining, sensitivity, export, recipes) take a BasePruner through its public
    surface; :class:`prunelab.Pruner` adds them as methods. Arguments as for :class:`prunelab.Pruner`.

    Args:
        model: any nn.Module; its Linear and Conv1d/2d/3d weights are prunable.
        val_data: labelled data to measure on (DataLoader, Dataset or ``(inputs, targets)``).
        train_data: data for scoring (taylor, attribution) and fine-tuning; defaults to val_data
            for scoring.
        metric: ``f(outputs, targets) -> float`` replacing top-1 accuracy (required when the
            targets are not class indices).
        loss: ``f(outputs, targets) -> scalar tensor`` for scoring and fine-tuning; defaults to
            cross-entropy for class-index targets.
        eval_samples: measure on a fixed class-stratified subset of this size (default: all).
        batch_size: evaluation and scoring batch size.
        seed: for the random criterion and anything else random.
    """

    def __init__(self, model: nn.Module, val_data, train_data=None, *, metric: Callable | None = None,
                 loss: Callable | None = None, eval_samples: int | None = None, batch_size: int = 1024,
                 seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.layers, self.skipped = find_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no prunable layers: prunelab prunes the weights of "
                             "Linear and Conv1d/2d/3d modules, and found none among its submodules.")
        _check_finite(model)
        self.device = self.layers[0].module.weight.device
        self.seed = seed
        self.batch_size = batch_size
        self.train_data = train_data
        self._by_name = {l.name: l for l in self.layers}

        x, y = materialize(val_data, "val_data")
        self.val_total = len(x)  # before taking the subset, so Metrics.data can say what it is a subset of
        x, y = materialize((x, y), "val_data", max_samples=eval_samples, device=self.device, seed=seed)
        self.val_inputs, self.val_targets = x, y
        self.metric = metric
        self.classification = self._check_fit(x, y, metric)
        self.classes = self._out_features if self.classification else 0
        if self.classification and y.dtype != torch.long:  # cross-entropy wants int64 class indices
            self.val_targets = y = y.long()
        if train_data is not None:  # fail now, not at the first taylor or attribution scoring
            self._forward_check(first_samples(train_data, 2, "train_data", device=self.device)[0], "train_data")
        if loss is None and self.classification:
            loss = nn.functional.cross_entropy
        self.loss = loss

        original = {n: p.detach().clone() for n, p in model.named_parameters()}
        self._params = dict(model.named_parameters())
        self._state = _State(plans={}, base=original, base_version=0, token=0)
        self._original = self._state
        self._history: list[_State] = [self._state]
        self._cursor = 0
        self._next_token = 1
        self._masks: dict[str, torch.Tensor] = {}  # param name -> effective keep-mask (absent: dense)
        self._kept: dict[str, int] = {}            # param name -> entries kept by its mask (counted once)
        self._changed: set[str] = set()            # modules changed since the last evaluation
        self._scores: dict = {}
        self._criterion_refs: dict[int, Criterion] = {}
        self._rankings: dict = {}
        self._metrics: dict[int, Metrics] = {}
        self._groups: dict[str, UnitGroup] | None = None
        self._structured_blocked: dict[str, str] = {}
        self._flops: tuple[int, dict[str, int]] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._evaluator = Evaluator(model, x, batch_size=batch_size)

    # ------------------------------------------------------------------ checks

    def _forward_check(self, x: torch.Tensor, what: str):
        """The model's outputs on the first two inputs, or a ValueError saying why they do not fit."""
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                return self.model(x[:2])
        except Exception as e:
            raise ValueError(
                f"{what} does not fit the model: a batch of inputs shaped {tuple(x.shape[1:])} "
                f"({x.dtype}, on {x.device}) failed in {type(self.model).__name__}.forward with: {e}. "
                "Check the input shape the model expects, and that the inputs have the model's dtype "
                f"({self.layers[0].module.weight.dtype})."
            ) from None
        finally:
            self.model.train(was_training)

    def _check_fit(self, x: torch.Tensor, y: torch.Tensor, metric) -> bool:
        out = self._forward_check(x, "val_data")
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"the model returned {type(out).__name__}; prunelab needs a model that returns "
                             "one tensor of outputs. Wrap it in a module that picks the output tensor.")
        is_class = (not y.dtype.is_floating_point and not y.is_complex() and y.dim() == 1
                    and out.dim() == 2 and y.dtype != torch.bool)
        if is_class:
            self._out_features = out.shape[1]
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= out.shape[1]:
                raise ValueError(f"targets range over [{lo}, {hi}] but the model has {out.shape[1]} outputs: "
                                 "class-index targets must lie in [0, outputs).")
        elif metric is None:
            raise ValueError(
                f"targets of dtype {y.dtype} and shape {tuple(y.shape)} are not class indices (a 1-D integer "
                "tensor), so accuracy is undefined. Pass metric=f(outputs, targets) -> float (and loss= for "
                "taylor scoring and fine-tuning)."
            )
        return is_class

    # ------------------------------------------------------------------ introspection

    @property
    def layer_names(self) -> list[str]:
        return [l.name for l in self.layers]

    def layer(self, name: str) -> Layer:
        return self._by_name[self._resolve([name])[0]]

    @property
    def structured_blocked(self) -> dict[str, str]:
        """Layers whose units cannot be removed, with the reason."""
        self.unit_groups()
        return dict(self._structured_blocked)

    @property
    def plans(self) -> dict[str, Plan]:
        """The pruning now in effect per layer (layers absent are dense)."""
        return dict(self._state.plans)

    def sparsity(self) -> dict[str, float]:
        """Fraction of each layer's weights that are zero in effect (masked)."""
        out = {}
        for l in self.layers:
            kept = self._kept.get(l.weight_name)
            out[l.name] = 0.0 if kept is None else 1 - kept / l.params
        return out

    def overall_sparsity(self) -> float:
        """Fraction of all prunable weights that are masked."""
        total = sum(l.params for l in self.layers)
        return sum(s * l.params for s, l in zip(self.sparsity().values(), self.layers)) / total

    def mask(self, layer: str) -> torch.Tensor:
        """The effective keep-mask of a layer's weight (True = kept)."""
        l = self.layer(layer)
        m = self._masks.get(l.weight_name)
        return torch.ones(l.shape, dtype=torch.bool, device=self.device) if m is None else m.clone()

    def masks(self) -> dict[str, torch.Tensor]:
        """Effective keep-masks of every masked parameter (weights, and biases or norms that
        structured pruning zeroes), by parameter name."""
        return {n: m.clone() for n, m in self._masks.items()}

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change of state; returns a function that unsubscribes."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    # ------------------------------------------------------------------ scoring

    @contextlib.contextmanager
    def dense(self):
        """Temporarily load the unmasked weights into the model (for scoring); restores the masks."""
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(self._state.base[n])
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for n in self._params:
                    self._write(n)

    def scoring_context(self, samples: int = 2048) -> ScoringContext:
        source = self.train_data if self.train_data is not None else (self.val_inputs, self.val_targets)
        what = "train_data" if self.train_data is not None else "val_data"
        if not hasattr(self, "_score_data"):
            x, y = first_samples(source, samples, what, device=self.device)
            self._score_data = x, (y.long() if self.classification and not y.dtype.is_floating_point else y)
        x, y = self._score_data
        return ScoringContext(self.model, self.layers, lambda: batches(x, y, min(self.batch_size, 256)),
                              self.loss or _missing_loss, self.classification, self.seed)

    def _criterion_key(self, criterion: Criterion, original) -> object:
        if isinstance(original, str):
            return original
        # Keep the instance alive while its id is a cache key, so no later instance can reuse the id
        # and be served its scores (keying by the instance would fail for unhashable dataclasses).
        self._criterion_refs[id(criterion)] = criterion
        return id(criterion)

    def scores(self, criterion: str | Criterion = "magnitude", *, units: bool = False) -> dict[str, torch.Tensor]:
        """Importance of every weight (or, with ``units=True``, every output unit) per layer, on the
        dense model. Cached per criterion and weights."""
        crit = get_criterion(criterion)
        key = (self._criterion_key(crit, criterion), units, self._state.base_version)
        if key not in self._scores:
            with self.dense():
                ctx = self.scoring_context()
                self._scores[key] = crit.unit_scores(ctx) if units else crit.weight_scores(ctx)
        return self._scores[key]

    def _ranking(self, crit, criterion, granularity: str, names: tuple[str, ...]) -> Ranking:
        key = (self._criterion_key(crit, criterion), granularity, names, self._state.base_version)
        if key not in self._rankings:
            if granularity == "structured":
                groups = [self.unit_groups()[n] for n in names]
                unit = self.scores(criterion, units=True)
                per_group = [sum(unit[l] for l in g.layers) for g in groups]
                if len(per_group) > 1:  # comparable across layers: each layer's scores over their mean
                    per_group = [s / s.mean().clamp_min(1e-12) for s in per_group]
                    # Each layer's best unit ranks last, so a global amount below 1 never cuts a
                    # layer off entirely (which would disconnect the network).
                    per_group = [s.float().index_fill(0, s.argmax().reshape(1), float("inf")) for s in per_group]
                self._rankings[key] = Ranking(per_group)
            else:
                w = self.scores(criterion)
                self._rankings[key] = Ranking([w[n] for n in names])
        return self._rankings[key]

    def unit_groups(self) -> dict[str, UnitGroup]:
        """Units that shrink together, by layer name: each prunable layer's output units with the
        inputs of the layers they feed and coupled layers (residual additions). Layers absent are
        in :attr:`structured_blocked`, with the reason."""
        if self._groups is None:
            with self.dense():
                self._groups, self._structured_blocked = find_unit_groups(
                    self.model, self.layers, self.val_inputs[:1])
        return self._groups

    # ------------------------------------------------------------------ pruning

    def prune(self, amount: float | Mapping[str, float] | None = None, *,
              threshold: float | Mapping[str, float] | None = None,
              criterion: str | Criterion = "magnitude", granularity: str = "unstructured",
              scope: str = "global") -> "BasePruner":
        """Set the sparsity of some or all layers.

        Args:
            amount: a fraction in [0, 1] for every layer (ranked together when ``scope="global"``,
                or each layer on its own when ``scope="layer"``), or ``{layer name: fraction}``.
                For ``"structured"`` it is the fraction of units (filters) removed; ``"2:4"`` is
                always 0.5 (pass 0 to undo it).
            threshold: instead of ``amount``: prune weights with ``|w|`` below this (for
                structured: units whose mean ``|w|`` is below it); a number or ``{layer: number}``.
            criterion: "magnitude", "random", "taylor", "attribution", or a Criterion instance.
            granularity: "unstructured", "structured" (output units / filters; the layers they
                feed lose the matching inputs) or "2:4" (2 of every 4 consecutive weights).
            scope: "global" or "layer" for a single ``amount``.

        Nothing changes if any argument is invalid. Returns the Pruner, so calls chain.
        """
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}: choose one of {list(GRANULARITIES)}.")
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}: choose one of {list(SCOPES)}.")
        crit = get_criterion(criterion)
        if (amount is None) == (threshold is None):
            raise ValueError("give either amount (a fraction to prune) or threshold (an absolute |w|), not "
                             f"{'both' if amount is not None else 'neither'}.")
        if threshold is not None:
            plans = self._threshold_plans(threshold, crit, criterion, granularity)
        else:
            plans = self._amount_plans(amount, crit, criterion, granularity, scope)
        self._commit(plans)
        return self

    def _amount_plans(self, amount, crit, criterion, granularity, scope) -> dict[str, Plan | None]:
        per_layer = isinstance(amount, Mapping)
        amounts = dict(amount) if per_layer else None
        if per_layer:
            names = self._resolve(list(amounts))
            amounts = dict(zip(names, amounts.values()))
            for v in amounts.values():
                check_fraction(v)
        else:
            check_fraction(amount)
        if granularity == "2:4":
            return self._nm_plans(amounts if per_layer else dict.fromkeys(self.layer_names, amount), crit,
                                  criterion, strict=per_layer)
        eligible = self._eligible(granularity, list(amounts) if per_layer else None)
        name = crit.name
        plans: dict[str, Plan | None] = {}
        if granularity == "unstructured":
            if per_layer or scope == "layer":
                for n in eligible:
                    a = amounts[n] if per_layer else amount
                    keep = self._ranking(crit, criterion, granularity, (n,)).masks(a)[0]
                    plans[n] = Plan(granularity, name, a, None, keep) if a > 0 else None
            else:
                keeps = self._ranking(crit, criterion, granularity, tuple(eligible)).masks(amount)
                for n, keep in zip(eligible, keeps):
                    a = 1 - int(keep.sum()) / keep.numel()
                    plans[n] = Plan(granularity, name, a, None, keep) if a > 0 else None
            return plans
        # structured: one decision per unit group (coupled layers share it)
        groups = self.unit_groups()
        roots = list(dict.fromkeys(groups[n].layers[0] for n in eligible))
        if per_layer:  # coupled layers lose the same units, so one amount must serve them all
            for root in roots:
                given = {n: amounts[n] for n in groups[root].layers if n in amounts}
                if len(set(given.values())) > 1:
                    raise ValueError(f"layers {list(given)} are coupled (they lose the same units, e.g. through a "
                                     f"residual addition) but got different amounts {given}; give them one amount.")
        if per_layer or scope == "layer":
            for root in roots:
                g = groups[root]
                a = next(amounts[n] for n in g.layers if n in amounts) if per_layer else amount
                keep = self._ranking(crit, criterion, granularity, (root,)).masks(a)[0]
                self._set_group(plans, g, Plan(granularity, name, a, None, keep) if a > 0 else None)
        else:
            keeps = self._ranking(crit, criterion, granularity, tuple(roots)).masks(amount)
            for root, keep in zip(roots, keeps):
                a = 1 - int(keep.sum()) / keep.numel()
                self._set_group(plans, groups[root], Plan(granularity, name, a, None, keep) if a > 0 else None)
        return plans

    def _nm_plans(self, amounts: dict[str, float], crit, criterion, strict: bool) -> dict[str, Plan | None]:
        bad = [a for a in amounts.values() if a not in (0, 0.5)]
        if bad:
            raise ValueError(f"2:4 sparsity removes exactly half of the weights, so its amount is 0.5 (or 0 to "
                             f"undo it); got {bad[0]}. Use granularity='unstructured' for other amounts.")
        plans: dict[str, Plan | None] = {}
        scores = self.scores(criterion) if any(amounts.values()) else {}
        for n, a in amounts.items():
            row = self._by_name[n].params // self._by_name[n].units
            if row % 4:
                if strict:
                    raise ValueError(f"layer {n!r} has rows of {row} weights; 2:4 needs a multiple of 4.")
                continue
            plans[n] = Plan("2:4", crit.name, 0.5, None, n_of_m_mask(scores[n])) if a else None
        return plans

    def _threshold_plans(self, threshold, crit, criterion, granularity) -> dict[str, Plan | None]:
        if crit.name != "magnitude":
            raise ValueError("threshold= prunes by absolute |w|, so it works with criterion='magnitude' only; "
                             "use amount= with other criteria.")
        if granularity == "2:4":
            raise ValueError("threshold= cannot give a 2:4 pattern; use amount=0.5 with granularity='2:4'.")
        if isinstance(threshold, Mapping):
            names = self._resolve(list(threshold))
            values = dict(zip(names, threshold.values()))
        else:
            names, values = None, None
        for v in (values.values() if values else [threshold]):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v or v < 0:
                raise ValueError(f"threshold must be a number >= 0 (an absolute weight magnitude), got {v!r}.")
        eligible = self._eligible(granularity, names)
        plans: dict[str, Plan | None] = {}
        for n in eligible:
            t = float(values[n] if values else threshold)
            if granularity == "unstructured":
                keep = self._ranking(crit, "magnitude", granularity, (n,)).masks_below(t)[0]
                a = 1 - int(keep.sum()) / keep.numel()
                plans[n] = Plan(granularity, crit.name, a, t, keep) if a > 0 else None
            else:
                g = self.unit_groups()[n]
                mean_abs = sum(self._state.base[self._by_name[l].weight_name].abs().reshape(g.units, -1).mean(1)
                               for l in g.layers) / len(g.layers)
                keep = mean_abs >= t
                a = 1 - int(keep.sum()) / keep.numel()
                self._set_group(plans, g, Plan(granularity, crit.name, a, t, keep) if a > 0 else None)
        return plans

    def _eligible(self, granularity: str, names: list[str] | None) -> list[str]:
        if granularity != "structured":
            return names if names is not None else self.layer_names
        groups = self.unit_groups()
        if names is None:
            if not groups:
                reasons = "; ".join(f"{n}: {r}" for n, r in self._structured_blocked.items())
                raise ValueError(f"no layer of this model can be pruned structurally ({reasons}). "
                                 "Use granularity='unstructured' or '2:4'.")
            return [n for n in self.layer_names if n in groups]
        for n in names:
            if n not in groups:
                raise ValueError(f"layer {n!r} cannot be pruned structurally: {self._structured_blocked[n]}. "
                                 "Use granularity='unstructured' for it.")
        return names

    def _set_group(self, plans: dict, group: UnitGroup, plan: Plan | None):
        for n in group.layers:
            plans[n] = plan

    def _commit(self, changes: dict[str, Plan | None]):
        """Apply new plans (None = dense) as one step of history."""
        self._push(replace(self._state, plans=self._merged(changes), token=self._take_token()))

    def _merged(self, changes: dict[str, Plan | None]) -> dict[str, Plan]:
        plans = dict(self._state.plans)
        for n, plan in changes.items():
            old = plans.pop(n, None)
            if old is not None and old.granularity == "structured" and (plan is None or plan.granularity != "structured"):
                for m in self.unit_groups()[n].layers:  # coupled layers lose the shared unit mask too
                    plans.pop(m, None)
            if plan is not None:
                plans[n] = plan
        return plans

    def _take_token(self) -> int:
        self._next_token += 1
        return self._next_token - 1

    def _push(self, state: _State):
        del self._history[self._cursor + 1:]
        self._history.append(state)
        self._cursor += 1
        self._enter(state)

    def _enter(self, state: _State):
        old, self._state = self._state, state
        if old.base is not state.base:
            touched = set(self._params)
        else:
            touched = set()
            for n in set(old.plans) | set(state.plans):
                if old.plans.get(n) is not state.plans.get(n):
                    touched |= self._plan_params(n, old.plans.get(n)) | self._plan_params(n, state.plans.get(n))
        self._refresh_masks(touched)
        for cb in list(self._listeners):
            cb()

    def _plan_params(self, layer: str, plan: Plan | None) -> set[str]:
        if plan is None:
            return set()
        if plan.granularity == "structured":
            return self.unit_groups()[layer].params
        return {self._by_name[layer].weight_name}

    def _refresh_masks(self, params: set[str]):
        if not params:
            return
        fresh: dict[str, torch.Tensor] = {}
        seen_groups = set()
        for n, plan in self._state.plans.items():
            if plan.granularity == "structured":
                g = self.unit_groups()[n]
                if id(g) in seen_groups or not (g.params & params):
                    continue
                seen_groups.add(id(g))
                for p in g.params & params:
                    fresh.setdefault(p, torch.ones_like(self._params[p], dtype=torch.bool))
                g.keep_masks(plan.keep, {p: fresh[p] for p in g.params & params})
            else:
                w = self._by_name[n].weight_name
                if w in params:
                    fresh[w] = fresh[w] & plan.keep if w in fresh else plan.keep.clone()
        for p in params:
            kept = int(fresh[p].count_nonzero()) if p in fresh else None
            if kept is not None and kept < fresh[p].numel():
                self._masks[p], self._kept[p] = fresh[p], kept
            else:
                self._masks.pop(p, None)
                self._kept.pop(p, None)
            self._write(p)
            self._changed.add(p.rpartition(".")[0])

    def _write(self, p: str):
        with torch.no_grad():
            m = self._masks.get(p)
            if m is None:
                self._params[p].copy_(self._state.base[p])
            else:
                torch.mul(self._state.base[p], m, out=self._params[p].data)

    def _resolve(self, names: list) -> list[str]:
        out = []
        for n in names:
            if isinstance(n, Layer):
                n = n.name
            if n not in self._by_name:
                close = difflib.get_close_matches(str(n), self.layer_names, n=3)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"unknown layer {n!r}.{hint} Prunable layers: {self.layer_names}.")
            out.append(n)
        return out

    # ------------------------------------------------------------------ history

    def reset(self) -> "BasePruner":
        """Back to the original weights (bit for bit) with no masks; recorded in history."""
        if self._state.plans or self._state.base is not self._original.base:
            self._push(self._original)
        return self

    def undo(self) -> bool:
        """Step back in history; False when there is nothing to undo."""
        if self._cursor == 0:
            return False
        self._cursor -= 1
        self._enter(self._history[self._cursor])
        return True

    def redo(self) -> bool:
        """Step forward in history; False when there is nothing to redo."""
        if self._cursor + 1 >= len(self._history):
            return False
        self._cursor += 1
        self._enter(self._history[self._cursor])
        return True

    @property
    def can_undo(self) -> bool:
        return self._cursor > 0

    @property
    def can_redo(self) -> bool:
        return self._cursor + 1 < len(self._history)

    def set_weights(self, weights: Mapping[str, torch.Tensor], note: str = "weights") -> None:
        """Make ``weights`` (parameter name -> tensor) the new unmasked weights, as one step of
        history; masks stay. Fine-tuning uses this; reset() still returns the originals."""
        base, version = self._new_base(weights)
        self._push(_State(plans=self._state.plans, base=base, base_version=version, token=self._take_token()))

    def set_plans(self, plans: Mapping[str, Plan | None], weights: Mapping[str, torch.Tensor] | None = None) -> None:
        """Set explicit plans ({layer name: Plan, or None for dense}), and optionally new unmasked
        weights, as one step of history. For masks computed outside ``prune`` (regrowth, a state
        trained on a copy of the model). Layers not named keep their plans; a structured plan
        applies to every layer coupled with the one named. Nothing changes if anything is invalid."""
        changes: dict[str, Plan | None] = {}
        for name, plan in zip(self._resolve(list(plans)), plans.values()):
            if plan is None:
                changes[name] = None
                continue
            if not isinstance(plan, Plan) or plan.granularity not in GRANULARITIES:
                raise TypeError(f"plans[{name!r}] must be a prunelab Plan (or None for dense), got {plan!r}.")
            layer = self._by_name[name]
            shape = (layer.units,) if plan.granularity == "structured" else layer.shape
            keep = plan.keep
            if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or tuple(keep.shape) != tuple(shape):
                raise ValueError(f"plans[{name!r}].keep must be a bool tensor shaped {tuple(shape)} "
                                 f"(True = kept), got {getattr(keep, 'dtype', type(keep))} "
                                 f"{tuple(getattr(keep, 'shape', ()))}.")
            plan = replace(plan, keep=keep.detach().to(self.device).clone())
            if plan.granularity == "structured":
                self._eligible("structured", [name])
                self._set_group(changes, self.unit_groups()[name], plan)
            else:
                changes[name] = plan
        if weights is None:
            base, version = self._state.base, self._state.base_version
        else:
            base, version = self._new_base(weights)
        self._push(_State(plans=self._merged(changes), base=base, base_version=version, token=self._take_token()))

    def _new_base(self, weights: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        base = dict(self._state.base)
        for n, w in weights.items():
            if n not in base:
                close = difflib.get_close_matches(str(n), list(base), n=3)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"unknown parameter {n!r}.{hint} Names are those of model.named_parameters().")
            if not isinstance(w, torch.Tensor) or w.shape != base[n].shape:
                raise ValueError(f"parameter {n!r} has shape {tuple(base[n].shape)}, got "
                                 f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}.")
            base[n] = w.detach().to(base[n].device, base[n].dtype).clone()
        return base, self._take_token()  # unique for good: history can be cut, scores are cached by version

    # ------------------------------------------------------------------ measuring

    def outputs(self) -> torch.Tensor:
        """Model outputs on the evaluation data in the current state (recomputing only what changed)."""
        changed, self._changed = self._changed, set()
        return self._evaluator.outputs(changed)

    def flops(self) -> tuple[int, dict[str, int]]:
        """(FLOPs per sample of the dense model, FLOPs per prunable layer)."""
        if self._flops is None:
            self._flops = count_flops(self.model, self.val_inputs[:1], self.layer_names)
        return self._flops

    def evaluate(self) -> Metrics:
        """Measure the current state on the evaluation data (cached per state)."""
        token = self._state.token
        if token in self._metrics:
            return self._metrics[token]
        out = self.outputs()
        y = self.val_targets
        if self.metric is not None:
            acc, loss, per_class, interval = float(self.metric(out, y)), None, (), None
            if self.loss is not None:
                loss = float(self.loss(out, y))
            if self.classification:
                _, _, per_class, _ = classification_scores(out, y, self.classes)
        else:
            acc, loss, per_class, correct = classification_scores(out, y, self.classes)
            interval = wilson_interval(correct, len(y))
        total_flops, layer_flops = self.flops()
        sparsity = self.sparsity()
        nonzero_flops = total_flops - sum(layer_flops[n] * s for n, s in sparsity.items())
        params = sum(p.numel() for p in self._params.values())
        masked = sum(self._masks[p].numel() - kept for p, kept in self._kept.items())
        mask_bits = sum(m.numel() for m in self._masks.values())
        metrics = Metrics(
            accuracy=acc, loss=loss, per_class=per_class, samples=len(y),
            data="validation" if len(y) == self.val_total else f"validation (subset of {self.val_total})",
            params=params, nonzero_params=params - masked, dense_bytes=4 * params,
            sparse_bytes=4 * (params - masked) + (mask_bits + 7) // 8,
            flops=total_flops, nonzero_flops=int(round(nonzero_flops)),
            metric_name="accuracy" if self.metric is None else getattr(self.metric, "__name__", "metric"),
            accuracy_interval=interval,
        )
        self._metrics[token] = metrics
        return metrics

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}, {len(self.layers)} prunable layers, "
                f"sparsity {self.overall_sparsity():.1%})")

    # ------------------------------------------------------------------ explorer support (prunelab.explorer)

    @property
    def weights_version(self) -> int:
        """Names the unmasked weights in effect: changes when set_weights (or reset, undo, redo
        across it) changes them, so views know when dense references must be rebuilt."""
        return self._state.base_version

    @property
    def original_weights(self) -> dict[str, torch.Tensor]:
        """The parameters as they were when the Pruner was made, by name (the Pruner's own
        tensors: read them, do not modify them)."""
        return dict(self._original.base)

    def add_scores(self, criterion: str, scores: Mapping[str, torch.Tensor], *, units: bool,
                   weights_version: int) -> bool:
        """Adopt scores of a named criterion computed elsewhere (the explorer scores a copy of the
        model on a background thread), so pruning by them needs no recomputation. Ignored, and
        False returned, when the weights changed since ``weights_version``."""
        if weights_version != self._state.base_version or get_criterion(criterion).name != criterion:
            return False
        self._scores[(criterion, units, weights_version)] = dict(scores)
        return True


def _missing_loss(outputs, targets):
    raise ValueError("this needs a loss: pass loss=f(outputs, targets) -> scalar tensor to the Pruner.")


def _check_finite(model: nn.Module):
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"the model has non-finite weights (NaN or inf) in {bad[:5]}: pruning rankings "
                         "would be meaningless. Fix or reload the weights first.")
