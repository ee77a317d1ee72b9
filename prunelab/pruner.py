"""The public Pruner: the core's masks, history and measurement, with the workflows as methods.

:class:`prunelab.core.base.BasePruner` holds the state (masks over the model's own weights,
history, scores, evaluation), composed of small parts in :mod:`prunelab.core`. The workflows
below it (retraining, sensitivity, export, recipes) each take a BasePruner through its public
surface; this class only names them as methods, so ``pruner.finetune(5)`` is
``prunelab.retrain.finetune(pruner, 5)``.
"""

from __future__ import annotations

from typing import Mapping

from . import export, recipe, reports, retrain, sensitivity
from .core.base import BasePruner
from .reports.flipped import flipped as _flipped
from .retrain import FinetuneSettings as _F, IterateSettings as _I, RecalibrateSettings as _R


class Pruner(BasePruner):
    """Prune ``model`` and measure it on ``val_data``.

    Args:
        model: any nn.Module; its Linear and Conv1d/2d/3d weights are prunable. It may take one
            tensor or keyword tensors, and return a tensor, a ModelOutput or dict (its ``logits``
            are measured) or a tuple (its first element): Hugging Face models work as they are.
        val_data: labelled data to measure on: an ``(inputs, labels)`` pair (inputs a tensor or a
            dict of tensors: every key reaches the model as a keyword), a dict batch with its
            labels under ``label_key``, or a Dataset / DataLoader of pairs or of such dicts.
        train_data: data for scoring (taylor, attribution) and fine-tuning, in the same forms;
            defaults to val_data for scoring.
        output: which tensor of the model's return value to measure: a key (``"logits"``) or a
            function ``f(returned) -> tensor`` (default: see ``model``).
        label_key: the key of the labels in dict batches (default ``"labels"``).
        metric: ``f(outputs, targets) -> float`` replacing top-1 accuracy (required when the
            targets are not class indices or token labels).
        loss: ``f(outputs, targets) -> scalar tensor`` for scoring and fine-tuning; defaults to
            cross-entropy for class-index targets (per token, -100 ignored, for token labels).

    A language model (outputs ``[batch, tokens, vocab]``, labels ``[batch, tokens]``) is scored
    per token: given ``labels = input_ids`` (a causal LM, as Hugging Face trains one) the labels
    are shifted to the next token, and ``evaluate()`` reports next-token accuracy and
    ``perplexity`` (the exponential of the model's own loss); see :mod:`prunelab.core.tokens`.
    A ``metric`` or ``loss`` of yours receives the targets as they are scored, so for a causal LM
    already shifted (position t's target is token t + 1, -100 where there is none): write it
    without a shift of its own.

    Example:
        >>> pl.Pruner(bert, ({"input_ids": ids, "attention_mask": mask}, labels))  # doctest: +SKIP
        eval_samples: measure on a fixed class-stratified subset of this size (default: all).
        batch_size: evaluation and scoring batch size.
        seed: for the random criterion, the stratified measuring order and anything else random.
        cache_bytes: the budget for activations cached between evaluations (default 512 MiB); the
            evaluation never holds more, whatever the number of samples (``pruner.memory()``).
    """

    def export(self, path, format: str = "state_dict"):
        """Write the current state to ``path`` (see :mod:`prunelab.export`).

        Args:
            path: the file ("structured" writes ``<path>.safetensors`` and ``<path>.pt2``).
            format: "state_dict", "sparse", "structured", "onnx", "recipe" or "int8" (int8 weights;
                the structured cut first when units are removed; load with ``pl.load_int8``).

        Returns:
            An :class:`prunelab.Exported`: the files, their total bytes, format-specific details.

        Example:
            >>> pruner.prune(0.5, granularity="structured").export("small", format="structured")
        """
        return export.export(self, path, format)

    def finetune(self, epochs: int = _F.epochs, *, lr: float = _F.lr, optimizer=_F.optimizer,
                 batch_size: int = _F.batch_size, progress: bool = True):
        """Retrain on train_data with the masks held (pruned weights, and their optimizer state, stay
        exactly zero); the trained weights become one step of history (undo, reset work).

        Args:
            epochs: passes over train_data.
            lr, batch_size: the optimizer's learning rate and the batch size.
            optimizer: "adam", "adamw", "sgd", a torch.optim class or ``f(params, lr)``.
            progress: show a progress bar.

        Returns:
            A FinetuneResult: accuracy before and after, loss per epoch, seconds.

        Example:
            >>> pruner.prune(0.9).finetune(2).accuracy_after
        """
        return retrain.finetune(self, epochs, lr=lr, optimizer=optimizer, batch_size=batch_size, progress=progress)

    def iterate(self, target, *, steps: int = _I.steps, epochs_per_step: int = _I.epochs_per_step,
                schedule: str = _I.schedule, criterion=_I.criterion, granularity: str | None = _I.granularity,
                regrow: float = _I.regrow, final_epochs: int = _I.final_epochs, recalibrate: bool = _I.recalibrate,
                lr: float = _I.lr, optimizer=_I.optimizer, batch_size: int = _I.batch_size, progress: bool = True):
        """Gradual pruning toward ``target``: prune to the schedule's next sparsity, fine-tune,
        repeat, then fine-tune more. Each step is one step of history.

        Args:
            target: a fraction, or ``{layer: fraction}``.
            steps, epochs_per_step, final_epochs: the schedule's length and its fine-tuning.
            schedule: "agp" (Zhu & Gupta's cubic), "linear" or "constant".
            criterion, granularity: default to those in effect (else magnitude, unstructured).
            regrow: the fraction of kept weights swapped each step for the pruned ones with the
                largest gradients (RigL), at the same sparsity.
            recalibrate: re-estimate BatchNorm statistics after each step's fine-tuning (they are
                frozen while training), as part of that step.
            lr, optimizer, batch_size, progress: as for :meth:`finetune`.

        Returns:
            The history table (a :class:`prunelab.Table`, one row per step).

        Example:
            >>> pruner.iterate(0.95, steps=5).column("accuracy_after")
        """
        return reports.remember_iterate(self, retrain.iterate(self, target, steps=steps, epochs_per_step=epochs_per_step, schedule=schedule,
                               criterion=criterion, granularity=granularity, regrow=regrow,
                               final_epochs=final_epochs, recalibrate=recalibrate, lr=lr, optimizer=optimizer, batch_size=batch_size,
                               progress=progress))

    def recalibrate(self, data=None, *, batches: int = _R.batches, batch_size: int = _R.batch_size,
                    bias_compensation: bool = _R.bias_compensation):
        """Recovery without training: re-estimate every BatchNorm's running statistics on ``data``
        (train_data by default; momentum=None, the model otherwise in eval mode) and fold the mean
        contribution of structurally removed units into the bias of the layers they fed (FLAP's
        bias compensation), as ONE step of history: ``undo()`` returns the raw pruned state,
        buffers included (see :mod:`prunelab.retrain.recalibration`).

        Args:
            data: calibration data (a DataLoader, Dataset or ``(inputs, targets)``; targets unused).
            batches, batch_size: at most ``batches`` shuffled batches of ``batch_size`` samples.
            bias_compensation: False re-estimates the statistics only.

        Returns:
            A Recalibration: ``accuracy_before``, ``accuracy_after``, ``gain``, ``readout()``,
            ``normalizations``, ``compensated``, ``uncompensated`` (layers without a bias).

        Example:
            >>> pruner.prune(0.3, granularity="structured").recalibrate().readout()
            'after recalibration: 95.8% (+10.2 pts)'
        """
        return retrain.recalibrate(self, data, batches=batches, batch_size=batch_size,
                                   bias_compensation=bias_compensation)

    def report(self, kind: str, **options):
        """Measure one of the tables people publish about pruning, on the model as it is (see
        :mod:`prunelab.reports`); the Pruner's state is left as it was, bit for bit.

        Args:
            kind: "sparsity", "criteria", "layers", "thresholds", "iterations" (of the last
                :meth:`iterate`), "timing", "inference", "size" or "compare".
            options: the kind's options, e.g. ``sparsities=[0, 0.5, 0.9]``, ``criteria=["magnitude",
                "random", "taylor"]``, ``thresholds=[0.01, 0.05]``, ``models={"b": state}``.

        Returns:
            A :class:`prunelab.Table`: markdown when printed, HTML in a notebook, and ``.rows``,
            ``.to_csv()``, ``.to_markdown()``, ``.to_pandas()``.

        Example:
            >>> print(pruner.report("sparsity", sparsities=[0, 0.5, 0.9]))
        """
        return reports.report(self, kind, **options)

    def flipped(self, *, by_class: bool = False):
        """The evaluation samples whose predicted class changed between the dense model (the
        original weights, on a private copy) and the current one; the Pruner is left as it was
        (see :mod:`prunelab.reports.flipped`). Classifiers only.

        Args:
            by_class: False: one row per changed sample (``index``, ``label``, ``before``,
                ``after``, ``confidence_before``, ``confidence_after``: the softmax probability
                of each predicted class). True: one row per class (``samples``, ``flipped``,
                ``rate``, ``share``, ``into``, ``broken``, ``fixed``, accuracy before and after), the
                classes with the most changed samples first.

        Returns:
            A :class:`prunelab.Table`; ``index`` is the position in ``pruner.val_inputs``.

        Example:
            >>> pruner.prune(0.9).flipped().column("index")
        """
        return _flipped(self, by_class=by_class)

    def sensitivity(self, sparsities=None, layers=None, criterion="magnitude", granularity: str = "unstructured",
                    executor=None):
        """Prune one layer at a time (the others unpruned) to each of ``sparsities`` and measure.

        Args:
            sparsities: the fractions to try (default: ``prunelab.sensitivity.DEFAULT_SPARSITIES``).
            layers: the layers to try (default: all).
            criterion, granularity: as for :meth:`prune`.
            executor: any concurrent.futures.Executor, e.g. a Dask ``client.get_executor()``
                (default: here, in turn); all give the same table.

        Returns:
            A SensitivityTable (layer, sparsity, accuracy, drop), cached per weights and arguments.

        Example:
            >>> pruner.sensitivity([0.5, 0.9]).rows
        """
        return sensitivity.sensitivity(self, sensitivity.DEFAULT_SPARSITIES if sparsities is None else sparsities,
                                       layers, criterion, granularity, executor)

    def allocate(self, target_sparsity: float | None = None, max_drop: float | None = None, *,
                 target_flops: float | None = None, target_params: float | None = None,
                 target_latency: float | None = None, latency_batch: int = 1, round_to: int | None = None,
                 table=None, executor=None):
        """Choose per-layer sparsities from sensitivity curves (least sensitive layers pruned most),
        apply them, and measure.

        Args:
            target_sparsity: reach this overall sparsity; or
            max_drop: stay within this drop (summed single-layer drops, a fraction); or
            target_flops: keep this fraction of the dense FLOPs (measured after applying: within
                2% of ``nonzero_flops / flops``); or
            target_params: keep this fraction of the parameters (``nonzero_params / params``,
                within 2%); or
            target_latency: seconds per forward pass of ``latency_batch`` samples (default 1),
                measured on the network cut physically, within 2%; structured only (the default
                table is then structured). Exactly one of the five.
            round_to: with a structured table, keep a multiple of this many channels per layer.
            table: a SensitivityTable to use (default: :meth:`sensitivity`'s).
            executor: as for :meth:`sensitivity`.

        Returns:
            An Allocation: the sparsities, the sum of the single-layer drops, and the accuracy,
            FLOPs and parameters measured with all applied (``flops_kept``, ``params_kept``).

        Example:
            >>> pruner.allocate(target_sparsity=0.9).sparsities
            >>> pruner.allocate(target_flops=0.5, table=pruner.sensitivity(granularity="structured"), round_to=8)
            >>> pruner.allocate(target_latency=20e-3, latency_batch=256).latency   # seconds, measured
        """
        return sensitivity.allocate(self, target_sparsity, max_drop, target_flops=target_flops,
                                    target_params=target_params, target_latency=target_latency,
                                    latency_batch=latency_batch, round_to=round_to, table=table, executor=executor)


def apply_recipe(model, recipe_or_path, data, *, train_data=None, criteria: Mapping | None = None,
                 check: bool = True) -> Pruner:
    """Replay a recipe on ``model`` (a fresh instance; its weights are masked in place).

    Args:
        model: the model to prune, with the same prunable layers as the recorded one.
        recipe_or_path: a dict from :func:`prunelab.record_recipe` or the path of a recipe file.
        data: validation data, as for ``Pruner(model, val_data)``; with ``train_data``, the same
            data the recorded Pruner used (scores of "taylor" and "attribution" depend on it).
        criteria: ``{name: Criterion}`` for custom criteria the recipe names.
        check: compare the resulting masks with the recorded ones and warn when they differ.

    Returns:
        The Pruner, in the replayed state (its history holds the replayed steps).

    Raises:
        ValueError: a recipe that does not match its schema or the model, found before its first
            step runs. If a step still fails (or is interrupted), the model is reset to its weights
            before the call, bit for bit, and then the error propagates.

    Example:
        >>> pruner = pl.apply_recipe(fresh_model, "recipe.json", val_data)  # doctest: +SKIP
    """
    r = recipe.as_recipe(recipe_or_path, criteria)
    settings = r.get("pruner", {})
    pruner = Pruner(model, data, train_data=train_data, seed=settings.get("seed", 0),
                    batch_size=settings.get("batch_size", 1024), eval_samples=settings.get("eval_samples"))
    try:
        recipe.replay(pruner, r, data=data, train_data=train_data, criteria=criteria, check=check)
    except BaseException:
        pruner.reset()  # no Pruner is returned to reset it with: the model leaves as it came
        raise
    return pruner
