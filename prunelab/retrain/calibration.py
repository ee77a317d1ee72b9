"""What recalibration computes (:mod:`.recalibration` runs it as one step of history): the input
columns structured pruning removed, their mean on the dense network folded into the next
layers' biases (FLAP's bias compensation), running statistics re-estimated with
``momentum=None``, and the loss on the calibration batches that decides whether the
compensation is kept.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.base import BasePruner
from ..core.inputs import call
from ..core.modes import untouched
from .loop import keeps_statistics

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # what re-estimation writes back


def removed_inputs(pruner: BasePruner) -> dict[str, torch.Tensor]:
    """``{consumer parameter name: input columns removed}``: for every structured plan, the input
    columns (dim 1 of the weights its units feed) of the units it removed.

    Example:
        >>> pruner.prune({"0": 0.5}, granularity="structured")     # doctest: +SKIP
        >>> removed_inputs(pruner)["2.weight"].numel()            # doctest: +SKIP
        150
    """
    groups, out, seen = pruner.unit_groups(), {}, set()
    for name, plan in pruner.plans.items():
        if plan.granularity != "structured" or name not in groups or id(groups[name]) in seen:
            continue
        seen.add(id(groups[name]))
        gone = ~plan.keep.to(torch.bool)
        for s in groups[name].slices:
            if s.dim != 1:
                continue
            cols = s.index[gone.to(s.root.device)[s.root]]
            if len(cols):
                out[s.param] = torch.cat([out[s.param], cols]).unique() if s.param in out else cols.unique()
    return out


def _mean_inputs(model: nn.Module, modules: dict[str, nn.Module], batches) -> dict[str, torch.Tensor]:
    """Mean input of each of ``modules`` over ``batches``: per feature (Linear), per channel over
    positions (convolutions)."""
    sums, counts, handles = {}, {}, []

    def hook(name):
        def record(module, args):
            if not args or not isinstance(args[0], torch.Tensor):
                return  # called with keyword inputs only: nothing to average here
            x = args[0].detach()
            if isinstance(module, nn.modules.conv._ConvNd):
                x = x.transpose(0, 1).reshape(x.shape[1], -1)  # channels x (samples * positions)
                s, n = x.double().sum(1), x.shape[1]
            else:
                x = x.reshape(-1, x.shape[-1])
                s, n = x.double().sum(0), x.shape[0]
            sums[name] = sums[name] + s if name in sums else s
            counts[name] = counts.get(name, 0) + n
        return record

    try:
        for name, m in modules.items():
            handles.append(m.register_forward_pre_hook(hook(name)))
        with torch.no_grad():
            for x, _ in batches:
                call(model, x)
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / max(counts[n], 1)) for n in sums}


def compensation(pruner: BasePruner, model: nn.Module, unmasked: dict, batches) -> tuple[dict, dict, dict]:
    """The compensated biases: ``(new unmasked biases by name, {layer: columns}, {layer: why not})``.
    ``model`` holds the unmasked weights (the dense network) while this runs."""
    removed = removed_inputs(pruner)
    modules, skipped = {}, {}
    for param, cols in removed.items():
        layer = param.rpartition(".")[0]
        m = model.get_submodule(layer)
        if getattr(m, "bias", None) is None:
            skipped[layer] = "it has no bias to take the removed units' mean (none is added)"
        elif isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1:
            skipped[layer] = "a grouped convolution: its input channels do not reach every output"
        else:
            modules[layer] = m
    means = _mean_inputs(model, modules, batches) if modules else {}
    biases, done = {}, {}
    for layer, m in modules.items():
        param = f"{layer}.weight" if layer else "weight"
        cols = removed[param].to(means[layer].device)
        w = unmasked[param].index_select(1, cols.to(unmasked[param].device)).double()
        w = w.reshape(w.shape[0], w.shape[1], -1).sum(2)  # a convolution's kernel summed: its mean input is flat
        delta = w @ means[layer][cols].to(w.device)
        bias = f"{layer}.bias" if layer else "bias"
        biases[bias] = (unmasked[bias].double() + delta).to(unmasked[bias].dtype)
        done[layer] = len(cols)
    return biases, done, skipped


def calibration_loss(pruner: BasePruner, batches) -> float | None:
    """The Pruner's loss, averaged over the calibration ``batches`` (their targets), in eval mode;
    None when it has no loss."""
    if pruner.loss is None:
        return None
    total, n = 0.0, 0
    with untouched(pruner.model), torch.no_grad():
        for x, y in batches:
            total += float(pruner.loss(pruner.forward(x), y)) * len(x)
            n += len(x)
    return total / max(n, 1)


def reestimate(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    """Running statistics of every normalization with them (:func:`prunelab.retrain.loop.keeps_statistics`)
    re-estimated over ``batches`` with ``momentum=None`` (the cumulative average), every other
    module in eval mode; the model's flags, momenta and buffers come back as they were.

    Returns:
        ``{buffer name: new value}`` for those modules' :data:`STATISTICS` (a buffer a subclass
        adds, a counter of its own, is left as it was).
    """
    norms = {n: m for n, m in model.named_modules() if keeps_statistics(m)}
    if not norms:
        return {}  # nothing to re-estimate: no forward pass (and no batch drawn)
    momenta = {n: m.momentum for n, m in norms.items()}
    out = {}
    with untouched(model):  # eval mode; every flag and buffer restored after
        try:
            for m in norms.values():
                m.reset_running_stats()
                m.momentum = None
                m.train()
            with torch.no_grad():
                for x, _ in batches:
                    model(x)
            for n, m in norms.items():
                for b_name in STATISTICS:
                    b = getattr(m, b_name, None)
                    if isinstance(b, torch.Tensor):
                        out[f"{n}.{b_name}" if n else b_name] = b.detach().clone()
        finally:
            for n, m in norms.items():
                m.momentum = momenta[n]
    return out
