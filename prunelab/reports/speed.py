"""The tables of time: ``"timing"`` (how long each stage of pruning takes) and ``"inference"``
(dense vs pruned vs structured export, and int8 where available: accuracy and measured latency
beside the FLOPs ratio).

Latency is measured by :func:`prunelab.export.measure_latency` (fixed threads, warm-up, models
interleaved, the median); accuracy of every model by a loop of its own over ``model(x)``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from ..core.copies import ModelCopy
from ..core.tables import Table, fixed, percent
from ..export import export, int8_model, measure_latency, shrink
from ..retrain import finetune
from ..core.metrics import model_accuracy
from .common import Context, check_sparsities, criterion_name, prune_to

TIMED_FORMATS = ("sparse", "structured")


def timing_table(ctx: Context, sparsity: float = 0.5, *, criterion="magnitude", granularity: str = "unstructured",
                 epochs: int = 1, formats=TIMED_FORMATS) -> Table:
    """Time to score, to prune, to measure, to fine-tune (per epoch) and to export, measured here.

    Args:
        ctx: the report's context.
        sparsity: what the timed pruning prunes (one-shot, global) from the model as it is.
        criterion, granularity: of the timed pruning.
        epochs: epochs of the timed fine-tuning (0 skips it; so does a Pruner without train_data).
        formats: the export formats timed.

    Returns:
        A Table: ``stage, seconds, note``.
    """
    (sparsity,) = check_sparsities([sparsity], "sparsity")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs must be a whole number >= 0 (0 skips fine-tuning), got {epochs!r}.")
    twin = ctx.twin()
    ctx.total = 4 + len(formats)
    rows = []

    def timed(stage, note, fn):
        ctx.hooks.check()
        began = time.perf_counter()
        out = fn()
        rows.append(dict(stage=stage, seconds=time.perf_counter() - began, note=note))
        ctx.step(f"{stage} timed")
        return out

    twin.reset()
    name = criterion_name(criterion)
    timed(f"score ({name})", "importance scores of every prunable weight",
          lambda: twin.scores(criterion, units=granularity == "structured"))
    timed(f"prune to {sparsity:.0%}", f"{granularity}, global, scores already cached",
          lambda: prune_to(twin, sparsity, criterion=criterion, granularity=granularity))
    m = timed("measure", "one evaluate() of the pruned model", twin.evaluate)
    rows[-1]["note"] = f"one evaluate() on {m.samples} validation samples"
    if epochs and twin.train_data is not None:
        result = timed("fine-tune (per epoch)", "", lambda: finetune(twin, epochs, progress=False, hooks=ctx.hooks))
        rows[-1]["seconds"] /= epochs
        rows[-1]["note"] = f"mean of {epochs} epoch{'s' * (epochs != 1)}; accuracy {result.accuracy_before:.1%} " \
                           f"-> {result.accuracy_after:.1%}"
    else:
        why = "epochs=0" if not epochs else "the Pruner has no train_data"
        rows.append(dict(stage="fine-tune (per epoch)", seconds=None, note=f"not timed: {why}"))
        ctx.step("fine-tune skipped")
    with tempfile.TemporaryDirectory(prefix="prunelab-report-") as tmp:
        for fmt in formats:
            try:
                done = timed(f"export {fmt}", "", lambda fmt=fmt: export(twin, Path(tmp) / f"model-{fmt}", fmt))
                rows[-1]["note"] = f"{done.bytes / 1e6:.3f} MB written"
            except (ValueError, ImportError, OSError, RuntimeError) as e:
                rows.append(dict(stage=f"export {fmt}", seconds=None, note=f"failed: {str(e).splitlines()[0]}"))
    return Table(["stage", "seconds", "note"], rows, title="time per stage",
                 headers={"stage": "Stage", "seconds": "Time", "note": "Note"},
                 formats={"seconds": lambda v: f"{v:.3f} s"},
                 note=f"Wall time measured here on {torch.get_num_threads()} thread(s) "
                      f"({'cuda' if twin.device.type == 'cuda' else twin.device.type}).")


def inference_table(ctx: Context, *, batch: int = 256, threads: int = 1, repeats: int = 20,
                    int8: bool = True) -> Table:
    """Dense vs pruned vs structured export (vs int8): accuracy, latency at batch 1 and at
    ``batch``, throughput, measured speedup and the FLOPs ratio, for the model as it is.

    Args:
        ctx: the report's context.
        batch: the throughput batch (at most the evaluation samples).
        threads, repeats: of the latency measurement (:func:`prunelab.export.measure_latency`).
        int8: add the pruned model with int8 weights as ``export(format="int8")`` loads it back
            (:func:`prunelab.export.int8_model`: torch.ao dynamic int8 Linear layers, convolution
            weights rounded through int8).

    Returns:
        A Table: ``model, accuracy, latency_ms_1, latency_ms_batch, throughput, speedup,
        flops_ratio`` (speedup: dense latency at ``batch`` over this one's; flops_ratio: dense
        FLOPs over this one's).
    """
    if not isinstance(repeats, int) or repeats < 1 or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch and repeats must be whole numbers >= 1, got batch={batch!r}, repeats={repeats!r}.")
    twin = ctx.twin()
    ctx.total = 5
    notes = []
    with twin.dense():
        dense = ModelCopy(twin.model).model.eval()
    m = twin.evaluate()
    models = {"dense": (dense, 1.0), "pruned (masked)": (twin.model, m.theoretical_speedup)}
    ctx.step("dense copy made")
    try:
        shrunk = shrink(twin)
        if shrunk.removed:
            models["structured export"] = (shrunk.model, shrunk.flops_ratio)
        else:
            notes.append("structured export skipped: no units are removed in this state (prune with "
                         "granularity='structured')")
    except ValueError as e:
        notes.append(f"structured export skipped: {str(e).splitlines()[0]}")
    ctx.step("structured export made")
    if int8:
        quantized, why = int8_model(twin.model)
        if quantized is not None:
            models["int8 (dynamic, Linear)"] = (quantized, m.theoretical_speedup)
        else:
            notes.append(why)
    ctx.step("models ready")
    x = twin.val_inputs
    big = x[:batch]
    modules = {k: v[0] for k, v in models.items()}
    ctx.hooks.check()
    one = measure_latency(modules, x[:1], threads=threads, repeats=repeats)
    ctx.step("batch 1 timed")
    many = measure_latency(modules, big, threads=threads, repeats=repeats)
    ctx.step(f"batch {len(big)} timed")
    rows = []
    for label, (module, flops_ratio) in models.items():
        acc = m.accuracy if module is twin.model else model_accuracy(module, twin)
        rows.append(dict(model=label, accuracy=acc, latency_ms_1=one[label].median * 1e3,
                         latency_ms_batch=many[label].median * 1e3, throughput=len(big) / many[label].median,
                         speedup=many["dense"].median / many[label].median, flops_ratio=flops_ratio))
    note = (f"Median of {repeats} interleaved runs, {threads} thread(s); accuracy on {m.samples} validation "
            f"samples, overall sparsity {twin.overall_sparsity():.1%}.")
    return Table(["model", "accuracy", "latency_ms_1", "latency_ms_batch", "throughput", "speedup", "flops_ratio"],
                 rows, title="inference: dense vs pruned",
                 headers={"model": "Model", "accuracy": "Accuracy", "latency_ms_1": "Latency (batch 1)",
                          "latency_ms_batch": f"Latency (batch {len(big)})", "throughput": "Throughput",
                          "speedup": "Speedup (measured)", "flops_ratio": "FLOPs ratio"},
                 formats={"accuracy": percent(1), "latency_ms_1": fixed(3, " ms"), "latency_ms_batch": fixed(3, " ms"),
                          "throughput": fixed(0, "/s"), "speedup": fixed(2, "x"), "flops_ratio": fixed(2, "x")},
                 note=" ".join([note] + [n + "." for n in notes]))
