"""Gradual pruning (prune a little, fine-tune, repeat) as a job in three parts: prepare, run, apply.

:meth:`IterateJob.prepare` (on the Pruner's thread) checks the settings, works out the schedule
and takes a :class:`prunelab.core.copies.PrunerCopy`. :meth:`IterateJob.run` (on any thread) runs
every step on an independent Pruner over the copy and reports each completed step. Each one is
applied to the Pruner by :meth:`IterateJob.apply` (on the Pruner's thread) as one step of history,
so undo walks back step by step, and a cancelled run stays at its last completed step.
:func:`iterate` is the three parts on one thread.

A transaction per step: everything is checked in ``prepare`` (:mod:`.preflight`) before the copy
is taken; an error, a cancel or a KeyboardInterrupt anywhere in a step leaves the Pruner at its
last completed step, exactly (model, history, masks), and the history table with that step's row
last. Parameters and plans come back, and (``recalibrate``, the default) the BatchNorm statistics
re-estimated after each step's fine-tuning, as part of that step; train/eval flags are never touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..core.base import BasePruner
from ..core.copies import PrunerCopy
from ..core.planning import unit_sparsity
from ..core.tables import Table, count, percent, seconds
from .calibration import reestimate
from .loop import Hooks, console_progress, train_masked, trained_weights
from .preflight import preflight, rehearse
from .regrow import dense_gradients, regrow_masks
from .schedule import sparsity_schedule
from .settings import IterateSettings

HISTORY_COLUMNS = ("step", "target", "sparsity", "accuracy_before", "accuracy_after", "nonzero_params",
                   "regrown", "seconds")


def history_table(rows=()) -> Table:
    """The table ``iterate`` keeps: one row per step (step 0 is the starting point).

    ``target`` is the scheduled amount (a fraction of weights, or of units for structured
    pruning); ``sparsity`` the fraction of prunable weights pruned; accuracies are measured
    before and after that step's fine-tuning.

    Args:
        rows: dicts with the :data:`HISTORY_COLUMNS`.

    Returns:
        A :class:`prunelab.Table` titled "iterative pruning".

    Example:
        >>> history_table().columns[:3]
        ['step', 'target', 'sparsity']
    """
    return Table(HISTORY_COLUMNS, rows, title="iterative pruning", formats={
        "target": percent(1), "sparsity": percent(1), "accuracy_before": percent(2),
        "accuracy_after": percent(2), "nonzero_params": count, "regrown": count, "seconds": seconds})


def current_amount(pruner: BasePruner, granularity: str) -> float:
    """How far ``pruner`` is pruned already, in the unit ``iterate`` schedules.

    Args:
        pruner: a BasePruner.
        granularity: "structured" counts units; anything else counts weights.

    Returns:
        The fraction of prunable weights pruned, or for structured pruning the fraction of units
        of the layers that have them.

    Example:
        >>> current_amount(pruner, "unstructured") == pruner.overall_sparsity()  # doctest: +SKIP
        True
    """
    return unit_sparsity(pruner) if granularity == "structured" else pruner.overall_sparsity()


def scheduled_amounts(pruner: BasePruner, s: IterateSettings) -> tuple[float, list]:
    """The starting amount and the amount to prune to at each step of ``s`` (resolved settings).

    Returns:
        ``(start, amounts)``: fractions, or for a per-layer target ``{layer: fraction}`` per step
        (each layer on its own schedule; ``start`` is then the largest starting fraction).

    Raises:
        ValueError: when the Pruner is already pruned beyond the target (iterate only prunes further).
    """
    if isinstance(s.target, Mapping):
        if s.granularity == "structured":
            starts = {n: (p.amount if p is not None and p.granularity == "structured" else 0.0)
                      for n, p in ((n, pruner.plans.get(n)) for n in s.target)}
        else:
            starts = {n: pruner.sparsity()[n] for n in s.target}
    else:
        starts = {None: current_amount(pruner, s.granularity)}
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


@dataclass(frozen=True)
class IterateStep:
    """One completed step of :class:`IterateJob`: its history row, and the plans (every layer,
    None = dense) and unmasked weights to apply. Step 0, the starting point, has none to apply."""

    row: dict
    plans: dict | None = None
    weights: dict[str, torch.Tensor] | None = None
    buffers: dict[str, torch.Tensor] | None = None


class IterateJob:
    """Gradual pruning of ``pruner`` with ``settings``, in three parts.

    Args:
        pruner: a BasePruner (or Pruner) with train_data and a loss.
        settings: an :class:`IterateSettings`; ``criterion``/``granularity`` None are resolved
            against the Pruner by :meth:`prepare`.

    Attributes:
        settings: the resolved settings (after :meth:`prepare`).
        total: batches in the whole run (after :meth:`prepare`), for a progress bar.
        history: the history table :meth:`run` fills (see :func:`history_table`).

    Example:
        >>> job = IterateJob(pruner, IterateSettings(target=0.9, steps=3)).prepare()  # doctest: +SKIP
        >>> job.run(on_step=job.apply)            # doctest: +SKIP   (each step applied as it completes)
    """

    def __init__(self, pruner: BasePruner, settings: IterateSettings):
        self.pruner = pruner
        self.settings = settings
        self.copy: PrunerCopy | None = None
        self.total = 0
        self.history = history_table()

    def prepare(self) -> "IterateJob":
        """On the Pruner's thread: check everything, work out the schedule, take the copy.

        Returns:
            The job itself (ready to :meth:`run`).

        Raises:
            ValueError, TypeError: for bad settings, training that cannot run (see
            :func:`prunelab.retrain.preflight.preflight`), or a Pruner already pruned beyond the
            target. Nothing has changed then.
        """
        p = self.pruner
        s = self.settings.resolved(p)
        s.check(p.layer_names)
        start, amounts = scheduled_amounts(p, s)
        batches = preflight(p, s.batch_size)
        copy = PrunerCopy.of(p)
        rehearse(copy, s)
        self.settings, self._start, self._amounts, self._batches, self.copy = s, start, amounts, batches, copy
        self.total = s.total_epochs * len(batches)
        self.history = history_table()
        return self

    def run(self, hooks: Hooks | None = None, on_step: Callable[[IterateStep], None] | None = None) -> Table:
        """On any thread: at each step prune the copy to the scheduled sparsity, optionally regrow,
        fine-tune, and report the step.

        Args:
            hooks: progress after each batch, and cancel (:class:`Hooks`).
            on_step: called with each :class:`IterateStep` as it completes (step 0, the starting
                point, first), on this thread: apply it with :meth:`apply` on the Pruner's thread.

        Returns:
            The history table.

        Raises:
            Cancelled: when cancelled; the steps reported so far stay valid.
        """
        if self.copy is None:
            raise RuntimeError("call prepare() (on the Pruner's thread) before run().")
        hooks = hooks or Hooks()
        on_step = on_step or (lambda step: None)
        s, batches, twin = self.settings, self._batches, self.copy.pruner()
        loss = twin.loss
        m0 = twin.evaluate()
        row0 = dict(step=0, target=self._start, sparsity=twin.overall_sparsity(), accuracy_before=m0.accuracy,
                    accuracy_after=m0.accuracy, nonzero_params=m0.nonzero_params, regrown=0, seconds=0.0)
        on_step(IterateStep(row0))
        self.history.append(row0)
        for k, amount in enumerate(self._amounts, start=1):
            began = time.perf_counter()
            hooks.check()
            twin.prune(amount, criterion=s.criterion, granularity=s.granularity)
            before = twin.evaluate()
            grown = 0
            if s.regrow:
                weights = dict(twin.model.named_parameters())
                keep = {twin.layer(n).weight_name: twin.mask(n) for n in twin.plans}
                new, grown = regrow_masks(keep, weights, dense_gradients(twin.model, batches, loss, output=twin.output),
                                           s.regrow)
                if new:
                    by_param = {l.weight_name: l.name for l in twin.layers}
                    twin.set_plans({by_param[p]: twin.plans[by_param[p]].replace(keep=m) for p, m in new.items()})
            epochs = s.epochs_per_step + (s.final_epochs if k == s.steps else 0)
            train_masked(twin.model, twin.masks(), batches, loss, epochs=epochs, lr=s.lr,
                         optimizer=s.optimizer, hooks=hooks, done=(k - 1) * s.epochs_per_step * len(batches),
                         total=self.total, what=f"step {k}/{s.steps}", seed=twin.seed + k, output=twin.output)
            weights = trained_weights(twin.model)
            buffers = reestimate(twin.model, batches) if s.recalibrate else None
            twin.set_weights(weights, note="fine-tune", buffers=buffers or None)
            after = twin.evaluate()
            row = dict(step=k, target=amount if not isinstance(amount, Mapping) else max(amount.values()),
                       sparsity=twin.overall_sparsity(), accuracy_before=before.accuracy,
                       accuracy_after=after.accuracy, nonzero_params=after.nonzero_params, regrown=grown,
                       seconds=time.perf_counter() - began)
            on_step(IterateStep(row, self.copy.all_plans(twin.plans), weights, buffers or None))  # applied, then its row
            self.history.append(row)
        return self.history

    def apply(self, step: IterateStep) -> None:
        """On the Pruner's thread: one completed step becomes one step of history (step 0 changes
        nothing).

        Args:
            step: as reported by :meth:`run`.
        """
        if step.plans is not None:
            self.pruner.set_plans(step.plans, weights=step.weights, buffers=step.buffers)


def iterate(pruner: BasePruner, target, *, steps: int = IterateSettings.steps,
            epochs_per_step: int = IterateSettings.epochs_per_step, schedule: str = IterateSettings.schedule,
            criterion=IterateSettings.criterion, granularity: str | None = IterateSettings.granularity,
            regrow: float = IterateSettings.regrow, final_epochs: int = IterateSettings.final_epochs,
            recalibrate: bool = IterateSettings.recalibrate, lr: float = IterateSettings.lr, optimizer=IterateSettings.optimizer,
            batch_size: int = IterateSettings.batch_size, progress: bool = True,
            hooks: Hooks | None = None) -> Table:
    """Gradual pruning: prune a little, fine-tune, repeat, up to ``target``.

    Args:
        pruner: a BasePruner (or Pruner) with train_data.
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
        recalibrate: re-estimate BatchNorm statistics after each step's fine-tuning (as part of it).
        lr, optimizer, batch_size: of the fine-tuning (Adam at 1e-3 with a cosine decay per step).
        progress: show a progress bar (tqdm).
        hooks: progress after each batch and cancel, for callers on other threads.

    Returns:
        The history table (see :func:`history_table`). Each step is applied to ``pruner`` as one
        step of history as soon as it completes (so undo walks back step by step, and a
        cancelled run stays at its last completed step).

    Example:
        >>> history = iterate(pruner, 0.9, steps=3, progress=False)  # doctest: +SKIP
        >>> history[-1]["sparsity"]                                  # doctest: +SKIP
        0.9
    """
    settings = IterateSettings(target=target, steps=steps, epochs_per_step=epochs_per_step, schedule=schedule,
                               criterion=criterion, granularity=granularity, regrow=regrow,
                               final_epochs=final_epochs, recalibrate=recalibrate, lr=lr, optimizer=optimizer,
                               batch_size=batch_size)
    job = IterateJob(pruner, settings).prepare()
    with console_progress(hooks, progress, job.total, "iterative pruning") as run_hooks:
        return job.run(run_hooks, on_step=job.apply)
