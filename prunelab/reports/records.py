"""The tables of runs and of several models: ``"iterations"`` (the steps of gradual pruning) and
``"compare"`` (models or saved states side by side, before and after pruning).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from torch import nn

from ..core.base import BasePruner
from ..core.copies import ModelCopy
from ..core.tables import Table, count, fixed, percent
from ..export import measure_latency
from ..retrain import iterate
from .common import MB, Context, check_sparsities, check_two_of_four, criterion_name, file_bytes, prune_to, \
    scratch_folder


def iterations_table(ctx: Context, history=None, *, target: float | None = None, steps: int = 3,
                     epochs_per_step: int = 1) -> Table:
    """Step -> sparsity, accuracy and time, of the last ``iterate()`` (or of ``history``).

    Args:
        ctx: the report's context.
        history: a history table as ``iterate()`` returns (default: the Pruner's last one).
        target: with no history at all, run ``iterate(target, steps=..., epochs_per_step=...)``
            now, on the twin (the Pruner is not changed), and tabulate that.
        steps, epochs_per_step: of that run.

    Returns:
        A Table: ``step, target, sparsity, accuracy_before, accuracy_after, nonzero_params,
        seconds, elapsed`` (elapsed: the seconds of the steps so far).
    """
    history = history if history is not None else ctx.history
    if history is None:
        if target is None:
            raise ValueError("no iterate() run to tabulate: run pruner.iterate(...) first, pass history= (the table "
                             "iterate returns), or give target= to run one now on a copy.")
        ctx.total = 1
        history = iterate(ctx.twin(), target, steps=steps, epochs_per_step=epochs_per_step, progress=False,
                          hooks=ctx.hooks)
        ctx.step("iterate done")
    try:
        source = list(history.rows if hasattr(history, "rows") else history)
        elapsed, rows = 0.0, []
        for r in source:
            elapsed += float(r["seconds"])
            rows.append(dict(step=int(r["step"]), target=r["target"], sparsity=r["sparsity"],
                             accuracy_before=r["accuracy_before"], accuracy_after=r["accuracy_after"],
                             nonzero_params=r["nonzero_params"], seconds=float(r["seconds"]), elapsed=elapsed))
    except (KeyError, TypeError) as e:
        raise ValueError(f"history must be the table iterate() returns (rows with step, target, sparsity, "
                         f"accuracy_before, accuracy_after, nonzero_params, seconds); this one lacks {e}.") from None
    return Table(["step", "target", "sparsity", "accuracy_before", "accuracy_after", "nonzero_params", "seconds",
                  "elapsed"], rows, title="iterative pruning, step by step",
                 headers={"step": "Step", "target": "Target", "sparsity": "Sparsity",
                          "accuracy_before": "Accuracy (pruned)", "accuracy_after": "Accuracy (fine-tuned)",
                          "nonzero_params": "Nonzero", "seconds": "Time", "elapsed": "Elapsed"},
                 formats={"target": percent(1), "sparsity": percent(1), "accuracy_before": percent(2),
                          "accuracy_after": percent(2), "nonzero_params": count, "seconds": fixed(1, " s"),
                          "elapsed": fixed(1, " s")},
                 note="Step 0 is the starting point; each step prunes to its target, then fine-tunes.")


def as_model(reference: nn.Module, entry) -> nn.Module:
    """A model for one entry of ``compare``: a module as it is, or a state (a ``{name: tensor}``
    mapping or a .safetensors path) loaded into a copy of ``reference``."""
    if isinstance(entry, nn.Module):  # a copy: pruning it must not change the caller's model
        return ModelCopy(entry).model
    if isinstance(entry, (str, os.PathLike)):
        path = Path(entry)
        if not path.is_file():
            raise ValueError(f"compare: no file {str(path)!r} (give a .safetensors state, a model or a state dict).")
        from safetensors.torch import load_file

        entry = load_file(str(path))
    if not isinstance(entry, Mapping):
        raise TypeError(f"compare: each entry is an nn.Module, a state dict or a .safetensors path, "
                        f"got {type(entry).__name__}.")
    model = ModelCopy(reference).model
    try:
        model.load_state_dict(dict(entry))
    except RuntimeError as e:
        raise ValueError(f"compare: the state does not fit the model: {str(e).splitlines()[0]}") from None
    return model


def compare_table(ctx: Context, models: Mapping[str, object] | None = None, *, sparsity: float = 0.5,
                  criterion="magnitude", granularity: str = "unstructured", repeats: int = 10) -> Table:
    """Several models or saved states side by side, before and after one-shot pruning.

    Args:
        ctx: the report's context.
        models: ``{label: nn.Module, state dict or .safetensors path}`` (states load into a copy of
            the Pruner's model); the Pruner's model as it is comes first, as "this model".
        sparsity, criterion, granularity: the pruning applied to each.
        repeats: of the batch-1 latency measurement.

    Returns:
        A Table: ``model, accuracy_before, accuracy_after, mb_before, mb_after, latency_ms_before,
        latency_ms_after`` (sizes: the real "state_dict" and "sparse" files; latency at batch 1).
    """
    (sparsity,) = check_sparsities([sparsity], "sparsity")
    check_two_of_four(granularity, [sparsity])
    entries = dict(models or {})
    if "this model" in entries:
        raise ValueError("compare: 'this model' is the Pruner's own row; give the others other labels.")
    twin = ctx.twin()
    reference = twin.model
    pruners: dict[str, BasePruner] = {"this model": twin}
    for label, entry in entries.items():
        other = as_model(reference, entry)
        pruners[str(label)] = BasePruner(other, (twin.val_inputs, twin.val_targets), train_data=twin.train_data,
                                         metric=twin.metric, loss=twin.loss, batch_size=twin.batch_size, seed=twin.seed,
                                         output=twin.output, label_key=twin.label_key)
    ctx.total = 2 * len(pruners)
    rows = []
    x = twin.val_inputs[:1]
    with scratch_folder() as folder:
        for i, (label, p) in enumerate(pruners.items()):
            p.reset()
            before = p.evaluate().accuracy
            mb_before = sum(file_bytes(p, folder, "state_dict", stem=f"m{i}").values()) / MB
            with p.dense():
                dense = ModelCopy(p.model).model
            ctx.step(f"{label}: dense measured")
            prune_to(p, sparsity, criterion=criterion, granularity=granularity)
            after = p.evaluate().accuracy
            mb_after = sum(file_bytes(p, folder, "sparse", stem=f"m{i}").values()) / MB
            t = measure_latency({"before": dense, "after": p.model}, x, repeats=repeats)
            rows.append(dict(model=label, accuracy_before=before, accuracy_after=after, mb_before=mb_before,
                             mb_after=mb_after, latency_ms_before=t["before"].median * 1e3,
                             latency_ms_after=t["after"].median * 1e3))
            ctx.step(f"{label}: pruned measured")
    return Table(["model", "accuracy_before", "accuracy_after", "mb_before", "mb_after", "latency_ms_before",
                  "latency_ms_after"], rows,
                 title=f"models compared at {sparsity:.0%} ({criterion_name(criterion)}, {granularity})",
                 headers={"model": "Model", "accuracy_before": "Accuracy", "accuracy_after": "Accuracy (pruned)",
                          "mb_before": "File", "mb_after": "File (sparse)", "latency_ms_before": "Latency",
                          "latency_ms_after": "Latency (pruned)"},
                 formats={"accuracy_before": percent(1), "accuracy_after": percent(1), "mb_before": fixed(3, " MB"),
                          "mb_after": fixed(3, " MB"), "latency_ms_before": fixed(3, " ms"),
                          "latency_ms_after": fixed(3, " ms")},
                 note=f"Each measured on the same {len(twin.val_inputs)} validation samples; files are the real "
                      f"state_dict and sparse exports; latency at batch 1, median of {repeats}, on 1 "
                      "thread.")
