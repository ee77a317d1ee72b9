"""Retraining pruned models: fine-tuning with the masks held, gradual pruning, and regrowth.

Pruned weights stay exactly zero while training: their gradients are masked before each
optimizer step, the masks are re-applied after it, and the optimizer's per-weight state
(Adam's moments, SGD's momentum) is zeroed where the mask is False, so no momentum revives them.

Training never touches the Pruner's own model. A run takes a :class:`Snapshot` (a private copy
of the model holding the Pruner's unmasked weights, and its plans), trains the copy, and hands
the result back as one step of the Pruner's history (``set_weights`` / ``set_plans``): undo
steps back, ``reset()`` restores the original weights. The weights handed back are the trained
weights as the model uses them, so pruned weights are zero in the new unmasked weights too.
That keeps later rankings honest: a weight pruned before fine-tuning ranks lowest afterwards
(gradual pruning only adds to the pruned set), and a slider moved back down revives it at zero,
where the next fine-tuning trains it.

BatchNorm layers stay in eval mode while training: their running statistics are buffers that the
Pruner's history does not hold, so training leaves them untouched and undo/reset stay exact;
their affine parameters train like any other.

Cancelling (a ``threading.Event`` in :class:`Hooks`) stops between batches. ``finetune`` then
leaves the Pruner unchanged; ``iterate`` leaves it at its last completed step (each step is
applied as it completes).
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from ..core.base import BasePruner
from ..core.checks import GRANULARITIES, check_fraction
from ..core.data import as_dataset
from ..core.tables import Table, count, percent, seconds

SCHEDULES = ("agp", "linear", "constant")
OPTIMIZERS = ("adam", "adamw", "sgd")


class Cancelled(Exception):
    """Training was cancelled between two batches."""


@dataclass
class Hooks:
    """How a caller watches and stops a run (the explorer's panel uses these from its thread).

    ``progress(done, total, what)`` is called after every batch (``done`` counts batches in the
    whole run); setting ``cancel`` stops the run before the next batch.
    """

    progress: Callable[[int, int, str], None] | None = None
    cancel: threading.Event | None = None

    def check(self):
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("training was cancelled")


# ---------------------------------------------------------------------- schedules

def sparsity_schedule(start: float, target: float, steps: int, schedule: str = "agp") -> list[float]:
    """The sparsity to prune to at each of ``steps`` steps, ending at ``target``.

    ``"agp"`` is the cubic schedule of Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f)(1 - t/n)^3``,
    pruning fast while many redundant weights remain and slowly near the target. ``"linear"``
    moves in equal steps. ``"constant"`` prunes to the target at every step (with regrowth, the
    mask keeps changing at a fixed sparsity, as in RigL).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {list(SCHEDULES)}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}.")
    out = []
    for t in range(1, steps + 1):
        if schedule == "agp":
            s = target + (start - target) * (1 - t / steps) ** 3
        elif schedule == "linear":
            s = start + (target - start) * t / steps
        else:
            s = target
        out.append(min(max(s, 0.0), 1.0))
    out[-1] = target
    return out


# ---------------------------------------------------------------------- data and optimizers

class Batches:
    """Shuffled training batches on a device, reproducible from a seed. Tensor data is sliced
    directly (fast); other datasets go through a DataLoader; a DataLoader is used as given."""

    def __init__(self, train_data, batch_size: int, device, seed: int = 0):
        if train_data is None:
            raise ValueError("training needs train_data: create the Pruner with train_data=... (a DataLoader, "
                             "a Dataset, or an (inputs, targets) pair of tensors).")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = None
        self.tensors = None
        if isinstance(train_data, torch.utils.data.DataLoader):
            self.loader = train_data
        else:
            ds = as_dataset(train_data, "train_data")
            if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) == 2:
                self.tensors = ds.tensors
            else:
                self.loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                                          generator=self.generator)
        self.batch_size = batch_size
        if len(self) == 0:
            raise ValueError("train_data is empty: give it at least one (input, target) pair.")

    def __len__(self) -> int:
        if self.tensors is not None:
            return math.ceil(len(self.tensors[0]) / self.batch_size)
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.tensors is not None:
            x, y = self.tensors
            order = torch.randperm(len(x), generator=self.generator)
            for i in range(0, len(x), self.batch_size):
                idx = order[i:i + self.batch_size]
                yield x[idx].to(self.device), y[idx].to(self.device)
            return
        for batch in self.loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError(f"train_data: each batch must be an (inputs, targets) pair, got "
                                f"{type(batch).__name__}.")
            yield batch[0].to(self.device), batch[1].to(self.device)


def check_optimizer(optimizer, lr) -> None:
    """Raise a clear error for an unusable optimizer or learning rate, before any work starts."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive number (the learning rate, e.g. 1e-3), got {lr!r}.")
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError("pass the optimizer's class or a function f(params, lr) -> Optimizer, not an optimizer "
                        "instance: training runs on a private copy of the model, with its own parameters.")
    if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {list(OPTIMIZERS)}, or pass a "
                         "torch.optim class or a function f(params, lr) -> Optimizer.")
    if not isinstance(optimizer, str) and not callable(optimizer):
        raise TypeError(f"optimizer must be one of {list(OPTIMIZERS)}, a torch.optim class or a function; "
                        f"got {type(optimizer).__name__}.")


def make_optimizer(optimizer, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """``optimizer``: "adam", "adamw", "sgd" (momentum 0.9), a torch.optim class, or a function
    ``f(params, lr) -> Optimizer``."""
    check_optimizer(optimizer, lr)
    # foreach: one call for all tensors, which matters for small models on the CPU
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, foreach=True)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=True)
    opt = optimizer(params, lr=lr) if isinstance(optimizer, type) else optimizer(params, lr)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"optimizer returned {type(opt).__name__}, not a torch.optim.Optimizer.")
    return opt


# ---------------------------------------------------------------------- training with masks held

@contextlib.contextmanager
def training_mode(model: nn.Module):
    """Train mode (dropout active) with BatchNorm statistics frozen; restores the modes after."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed dropout and other random layers without disturbing the caller's random state. Only on
    the main thread: the global generator is shared, and a worker thread must not rewind it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def apply_masks(params: Mapping[str, torch.Tensor], dropped: Mapping[str, torch.Tensor], optimizer=None) -> None:
    """Zero the ``dropped`` entries (param name -> True where pruned) of the parameters and, given
    an optimizer, of its per-weight state (Adam's moments, SGD's momentum)."""
    # masked_fill, not multiplication: -0.0 * False is -0.0, and pruned weights should be +0.0 bit for bit.
    with torch.no_grad():
        for n, d in dropped.items():
            p = params[n]
            p.masked_fill_(d, 0)
            if optimizer is not None:
                for v in optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape:
                        v.masked_fill_(d, 0)


def train_masked(model: nn.Module, masks: Mapping[str, torch.Tensor], batches: Batches, loss: Callable, *,
                 epochs: int, lr: float, optimizer="adam", hooks: Hooks | None = None, done: int = 0,
                 total: int | None = None, what: str = "fine-tuning", seed: int = 0) -> list[float]:
    """Train ``model`` in place for ``epochs`` with ``masks`` (param name -> keep-mask) held.
    Returns the mean training loss of each epoch. The learning rate follows a cosine decay to
    zero over the run. ``done``/``total`` place this run's batches inside a longer run for
    ``hooks.progress``."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a whole number >= 0, got {epochs!r}.")
    hooks = hooks or Hooks()
    params = dict(model.named_parameters())
    dropped = {n: ~m.to(params[n].device) for n, m in masks.items()}
    opt = make_optimizer(optimizer, [p for p in params.values() if p.requires_grad], lr)
    steps = max(epochs * len(batches), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    total = total if total is not None else epochs * len(batches)
    apply_masks(params, dropped, opt)
    losses = []
    state_masked = False
    with training_mode(model), _seeded(seed, next(iter(params.values())).device):
        for _ in range(epochs):
            running, n = 0.0, 0
            for x, y in batches:
                hooks.check()
                opt.zero_grad(set_to_none=True)
                value = loss(model(x), y)
                if not torch.isfinite(value):
                    raise FloatingPointError(f"the training loss became {float(value.detach())}; lower lr (now {lr}).")
                value.backward()
                for name, d in dropped.items():
                    g = params[name].grad
                    if g is not None:
                        g.masked_fill_(d, 0)
                opt.step()
                sched.step()
                # The weights are masked after every step, whatever the optimizer does. Its state
                # is masked once it exists (after the first step): from then on, with zero
                # gradients and zero weights at pruned entries, momentum and moments stay zero there.
                apply_masks(params, dropped, None if state_masked else opt)
                state_masked = True
                running += float(value.detach()) * len(x)
                n += len(x)
                done += 1
                if hooks.progress is not None:
                    hooks.progress(done, total, what)
            losses.append(running / max(n, 1))
    opt.zero_grad(set_to_none=True)
    return losses


def trained_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def dense_gradients(model: nn.Module, batches: Batches, loss: Callable,
                    max_batches: int = 8) -> dict[str, torch.Tensor]:
    """Gradient of the loss for every weight, pruned ones included (at the current sparse
    weights), summed over the first ``max_batches`` batches: what RigL grows by."""
    grads: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    with training_mode(model):
        for i, (x, y) in enumerate(batches):
            if i >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            loss(model(x), y).backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] = grads[n] + p.grad if n in grads else p.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return grads


def regrow_masks(keep: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor],
                 grads: Mapping[str, torch.Tensor], fraction: float) -> tuple[dict[str, torch.Tensor], int]:
    """RigL's swap, per weight tensor: prune the ``fraction`` of the kept entries with the
    smallest magnitude and regrow as many pruned entries, those with the largest gradient
    magnitude (at zero), so each tensor keeps its sparsity. The fraction counts kept entries (as
    RigL's drop fraction does): at 95% sparsity a fraction of the pruned ones would exceed all
    the kept ones. Returns the new keep-masks and how many entries were regrown."""
    out, grown = {}, 0
    for n, k in keep.items():
        n_swap = min(int(round(fraction * int(k.sum()))), int((~k).sum()))
        if n_swap == 0:
            continue
        g = grads[n].abs().flatten().clone()
        g[k.flatten()] = -math.inf
        grow = torch.topk(g, n_swap).indices
        w = weights[n].abs().flatten().clone()
        w[~k.flatten()] = math.inf
        drop = torch.topk(w, n_swap, largest=False).indices
        new = k.flatten().clone()
        new[drop] = False
        new[grow] = True
        out[n] = new.reshape(k.shape)
        grown += n_swap
    return out, grown


# ---------------------------------------------------------------------- snapshots of a Pruner

@dataclass
class Snapshot:
    """What a training run needs from a Pruner, taken where the Pruner lives (the kernel's main
    thread): a private copy of the model holding the unmasked weights, the plans and masks."""

    model: nn.Module
    plans: dict
    masks: dict[str, torch.Tensor]
    layer_names: list[str]
    val: tuple[torch.Tensor, torch.Tensor]
    train_data: object
    options: dict = field(default_factory=dict)

    @classmethod
    def of(cls, pruner) -> "Snapshot":
        with pruner.dense():
            model = copy.deepcopy(pruner.model)
        return cls(model, pruner.plans, pruner.masks(), pruner.layer_names, (pruner.val_inputs, pruner.val_targets),
                   pruner.train_data, dict(metric=pruner.metric, loss=pruner.loss, batch_size=pruner.batch_size,
                                           seed=pruner.seed))

    def all_plans(self, plans: Mapping | None = None) -> dict:
        """Plans for every layer (None = dense), so applying them also clears layers pruned since."""
        plans = self.plans if plans is None else plans
        return {n: plans.get(n) for n in self.layer_names}

    def pruner(self):
        """An independent Pruner over the copy, in the snapshot's state (its history starts here)."""
        twin = BasePruner(self.model, self.val, train_data=self.train_data, **self.options)
        if self.plans:
            twin.set_plans(self.plans)
        return twin


def _require_training(pruner_or_snapshot):
    if pruner_or_snapshot.train_data is None:
        raise ValueError("fine-tuning needs training data: create the Pruner with train_data=... (a DataLoader, a "
                         "Dataset, or an (inputs, targets) pair of tensors). It never trains on val_data, which "
                         "measures the result.")
    loss = pruner_or_snapshot.loss if hasattr(pruner_or_snapshot, "loss") else pruner_or_snapshot.options["loss"]
    if loss is None:
        raise ValueError("fine-tuning needs a loss: pass loss=f(outputs, targets) -> scalar tensor to the Pruner "
                         "(the default, cross-entropy, applies to class-index targets only).")
    return loss


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None, None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False)

    def update(done, _total, what):
        bar.set_description(what, refresh=False)
        bar.update(done - bar.n)

    return bar, update


def _chain(*fns):
    fns = [f for f in fns if f is not None]
    return (lambda *a: [f(*a) for f in fns]) if fns else None


# ---------------------------------------------------------------------- fine-tuning

@dataclass(frozen=True)
class FinetuneResult:
    """One fine-tuning run: accuracy on the validation data before and after, the mean training
    loss of each epoch, and the wall time."""

    epochs: int
    accuracy_before: float
    accuracy_after: float
    train_loss: tuple[float, ...]
    seconds: float

    def __str__(self) -> str:
        return (f"fine-tuned {self.epochs} epochs in {self.seconds:.1f} s: accuracy {self.accuracy_before:.1%} -> "
                f"{self.accuracy_after:.1%}")


def finetune_snapshot(snap: Snapshot, epochs: int, *, lr: float, optimizer, batch_size: int,
                      hooks: Hooks | None = None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train the snapshot's model with its masks held; returns the trained weights (pruned ones
    zero) and the mean training loss of each epoch."""
    loss = _require_training(snap)
    batches = Batches(snap.train_data, batch_size, next(snap.model.parameters()).device, snap.options["seed"])
    losses = train_masked(snap.model, snap.masks, batches, loss, epochs=epochs, lr=lr, optimizer=optimizer, hooks=hooks,
                 seed=snap.options["seed"])
    return trained_weights(snap.model), losses


def finetune(pruner, epochs: int = 5, *, lr: float = 1e-3, optimizer="adam", batch_size: int = 32,
             progress: bool = True, hooks: Hooks | None = None) -> FinetuneResult:
    """Retrain ``pruner``'s model on its train_data with the masks held (pruned weights stay
    exactly zero), and apply the trained weights as one step of history."""
    _require_training(pruner)
    check_optimizer(optimizer, lr)  # fail before copying anything
    start = time.perf_counter()
    before = pruner.evaluate().accuracy
    snap = Snapshot.of(pruner)
    total = epochs * len(Batches(snap.train_data, batch_size, pruner.device))
    bar, update = _progress_bar(progress, total, "fine-tuning")
    hooks = Hooks(_chain(update, hooks.progress if hooks else None), hooks.cancel if hooks else None)
    try:
        weights, losses = finetune_snapshot(snap, epochs, lr=lr, optimizer=optimizer, batch_size=batch_size,
                                            hooks=hooks)
    finally:
        if bar is not None:
            bar.close()
    pruner.set_weights(weights, note="fine-tune")
    after = pruner.evaluate().accuracy
    return FinetuneResult(epochs, before, after, tuple(losses), time.perf_counter() - start)


# ---------------------------------------------------------------------- iterative pruning

HISTORY_COLUMNS = ("step", "target", "sparsity", "accuracy_before", "accuracy_after", "nonzero_params",
                   "regrown", "seconds")


def history_table(rows=()) -> Table:
    """The table ``iterate`` keeps: one row per step (step 0 is the starting point). ``target`` is
    the scheduled amount (a fraction of weights, or of units for structured pruning); ``sparsity``
    the fraction of prunable weights pruned; accuracies are measured before and after that
    step's fine-tuning."""
    return Table(HISTORY_COLUMNS, rows, title="iterative pruning", formats={
        "target": percent(1), "sparsity": percent(1), "accuracy_before": percent(2),
        "accuracy_after": percent(2), "nonzero_params": count, "regrown": count, "seconds": seconds})


def current_amount(pruner, granularity: str) -> float:
    """How far ``pruner`` is pruned already, in the unit ``iterate`` schedules: the fraction of
    prunable weights, or for structured pruning the fraction of units of the layers that have them."""
    if granularity != "structured":
        return pruner.overall_sparsity()
    blocked = pruner.structured_blocked
    units = sum(l.units for l in pruner.layers if l.name not in blocked)
    pruned = sum(int((~p.keep).sum()) for n, p in pruner.plans.items() if p.granularity == "structured")
    return pruned / units if units else 0.0


@dataclass
class IterateSettings:
    """What ``iterate`` does, checked before anything runs."""

    target: float | dict
    steps: int
    epochs_per_step: int
    schedule: str
    criterion: object
    granularity: str
    regrow: float
    final_epochs: int
    lr: float
    optimizer: object
    batch_size: int

    @property
    def total_epochs(self) -> int:
        return self.steps * self.epochs_per_step + self.final_epochs

    def check(self, layer_names: list[str]):
        if isinstance(self.target, Mapping):
            unknown = [n for n in self.target if n not in layer_names]
            if unknown:
                raise ValueError(f"unknown layers {unknown} in target; prunable layers: {layer_names}.")
            for v in self.target.values():
                check_fraction(v)
        else:
            check_fraction(self.target)
        sparsity_schedule(0.0, 0.5, self.steps, self.schedule)
        for what in ("epochs_per_step", "final_epochs"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{what} must be a whole number >= 0, got {v!r}.")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}: choose one of {list(GRANULARITIES)}.")
        if self.granularity == "2:4":
            raise ValueError("2:4 sparsity is always one half, so there is nothing to schedule: use "
                             "prune(0.5, granularity='2:4') and then finetune().")
        if isinstance(self.regrow, bool) or not isinstance(self.regrow, (int, float)) or not 0 <= self.regrow < 1:
            raise ValueError(f"regrow must be a fraction in [0, 1) of the pruned weights to regrow per step, "
                             f"got {self.regrow!r}.")
        if self.regrow and self.granularity != "unstructured":
            raise ValueError("regrow works with unstructured pruning (it swaps single weights); use "
                             "granularity='unstructured' or regrow=0.")
        check_optimizer(self.optimizer, self.lr)


def resolve_defaults(pruner, criterion, granularity) -> tuple[object, str]:
    """The criterion and granularity of the pruning in effect (when all layers agree), else
    magnitude and unstructured."""
    plans = list(pruner.plans.values())
    if criterion is None:
        names = {p.criterion for p in plans}
        criterion = names.pop() if len(names) == 1 else "magnitude"
    if granularity is None:
        kinds = {p.granularity for p in plans}
        granularity = kinds.pop() if len(kinds) == 1 and kinds != {"2:4"} else "unstructured"
    return criterion, granularity


def _scheduled_amounts(twin, s: IterateSettings) -> tuple[float, list]:
    """The starting amount and the amount to prune to at each step: fractions, or for a
    per-layer target, ``{layer: fraction}`` per step (each layer on its own schedule)."""
    if isinstance(s.target, Mapping):
        if s.granularity == "structured":
            starts = {n: (p.amount if p is not None and p.granularity == "structured" else 0.0)
                      for n, p in ((n, twin.plans.get(n)) for n in s.target)}
        else:
            starts = {n: twin.sparsity()[n] for n in s.target}
    else:
        starts = {None: current_amount(twin, s.granularity)}
    targets = dict(s.target) if isinstance(s.target, Mapping) else {None: s.target}
    for n, t in targets.items():
        if starts[n] > t + 1e-9:
            where = f"layer {n!r} is" if n is not None else "the model is"
            raise ValueError(f"{where} already pruned to {starts[n]:.1%}, beyond the target {t:.1%}: iterate() only "
                             "prunes further. Lower the sparsity with prune() or reset() first.")
    curves = {n: sparsity_schedule(starts[n], t, s.steps, s.schedule) for n, t in targets.items()}
    if None in curves:
        return starts[None], curves[None]
    return max(starts.values()), [{n: curves[n][k] for n in targets} for k in range(s.steps)]


def run_iterate(twin, settings: IterateSettings, apply: Callable[[dict, dict, dict], None],
                hooks: Hooks | None = None, layer_names: list[str] | None = None,
                on_start: Callable[[dict], None] | None = None) -> Table:
    """Gradual pruning on ``twin`` (a private Pruner): at each step prune to the scheduled
    sparsity, optionally regrow, fine-tune, and call ``apply(plans, weights, row)`` with the
    result. ``on_start(row)`` receives the starting point (step 0). Returns the history table."""
    hooks = hooks or Hooks()
    loss = _require_training(twin)
    layer_names = layer_names or twin.layer_names
    s = settings
    batches = Batches(twin.train_data, s.batch_size, twin.device, twin.seed)
    start, amounts = _scheduled_amounts(twin, s)
    history = history_table()
    m0 = twin.evaluate()
    history.append(dict(step=0, target=start, sparsity=twin.overall_sparsity(), accuracy_before=m0.accuracy,
                        accuracy_after=m0.accuracy, nonzero_params=m0.nonzero_params, regrown=0, seconds=0.0))
    if on_start is not None:
        on_start(history[0])
    total = s.total_epochs * len(batches)
    for k, amount in enumerate(amounts, start=1):
        began = time.perf_counter()
        hooks.check()
        twin.prune(amount, criterion=s.criterion, granularity=s.granularity)
        before = twin.evaluate()
        grown = 0
        if s.regrow:
            weights = dict(twin.model.named_parameters())
            keep = {twin.layer(n).weight_name: twin.mask(n) for n in twin.plans}
            grads = dense_gradients(twin.model, batches, loss)
            new, grown = regrow_masks(keep, weights, grads, s.regrow)
            if new:
                by_param = {l.weight_name: l.name for l in twin.layers}
                twin.set_plans({by_param[p]: replace(twin.plans[by_param[p]], keep=m) for p, m in new.items()})
        epochs = s.epochs_per_step + (s.final_epochs if k == s.steps else 0)
        train_masked(twin.model, twin.masks(), batches, loss, epochs=epochs, lr=s.lr,
                     optimizer=s.optimizer, hooks=hooks, done=(k - 1) * s.epochs_per_step * len(batches),
                     total=total, what=f"step {k}/{s.steps}", seed=twin.seed + k)
        weights = trained_weights(twin.model)
        twin.set_weights(weights, note="fine-tune")
        after = twin.evaluate()
        row = dict(step=k, target=amount if not isinstance(amount, Mapping) else max(amount.values()),
                   sparsity=twin.overall_sparsity(), accuracy_before=before.accuracy, accuracy_after=after.accuracy,
                   nonzero_params=after.nonzero_params, regrown=grown, seconds=time.perf_counter() - began)
        history.append(row)
        plans = {n: twin.plans.get(n) for n in layer_names}
        apply(plans, weights, row)
    return history


def iterate(pruner, target, *, steps: int = 10, epochs_per_step: int = 4, schedule: str = "agp",
            criterion=None, granularity: str | None = None, regrow: float = 0.0, final_epochs: int = 10,
            lr: float = 1e-3, optimizer="adam", batch_size: int = 32, progress: bool = True,
            hooks: Hooks | None = None) -> Table:
    """Gradual pruning: prune a little, fine-tune, repeat, up to ``target``.

    Args:
        target: the sparsity to reach (a fraction of prunable weights; for structured pruning, of
            units), or ``{layer: fraction}``. Starts from the sparsity already in effect.
        steps: how many prune-and-fine-tune steps.
        epochs_per_step: fine-tuning epochs after each pruning step.
        schedule: "agp" (Zhu & Gupta's cubic), "linear", or "constant" (the target every step).
        criterion, granularity: default to those in effect when all layers agree, else
            "magnitude" and "unstructured". Each step ranks again on the fine-tuned weights.
        regrow: a fraction of the kept weights swapped at every step, after pruning and before
            fine-tuning, for the pruned weights with the largest gradient magnitude (RigL; they
            regrow at zero), keeping each layer's sparsity. Unstructured only.
        final_epochs: more fine-tuning after the last step.
        lr, optimizer, batch_size: of the fine-tuning (Adam at 1e-3 with a cosine decay per step).

    Each step is applied to ``pruner`` as one step of history as soon as it completes (so undo
    walks back step by step, and a cancelled run stays at its last completed step). Returns the
    history table (see :func:`history_table`).
    """
    _require_training(pruner)
    criterion, granularity = resolve_defaults(pruner, criterion, granularity)
    settings = IterateSettings(target, steps, epochs_per_step, schedule, criterion, granularity, regrow,
                               final_epochs, lr, optimizer, batch_size)
    settings.check(pruner.layer_names)
    twin = Snapshot.of(pruner).pruner()
    total = settings.total_epochs * len(Batches(pruner.train_data, batch_size, pruner.device))
    bar, update = _progress_bar(progress, total, "iterative pruning")
    hooks = Hooks(_chain(update, hooks.progress if hooks else None), hooks.cancel if hooks else None)
    try:
        return run_iterate(twin, settings, lambda plans, weights, row: pruner.set_plans(plans, weights=weights),
                           hooks, pruner.layer_names)
    finally:
        if bar is not None:
            bar.close()
