"""Layer kinds from outside torch.nn that prunelab prunes, told apart without importing their
library: transformers' ``Conv1D`` (GPT-2's linear layers, weight stored ``[in, out]``), and the
torch-pruning pruner that lets the dependency graph and the structured surgery treat it as one
layer rather than the matmul inside it.
"""

from __future__ import annotations

from torch import nn


def is_conv1d(module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (GPT-2's linear layers, weight ``[in, out]``),
    told by class name and module path so that transformers need not be installed or imported.

    Example:
        >>> is_conv1d(nn.Linear(2, 2))
        False
    """
    return any(c.__name__ == "Conv1D" and c.__module__.split(".")[0] == "transformers"
               for c in type(module).__mro__)


def tp_pruners(model: nn.Module) -> dict:
    """torch-pruning's ``customized_pruners`` for the layer kinds it does not know: transformers'
    Conv1D (weight ``[in, out]``). Pass it to every ``DependencyGraph.build_dependency`` on
    ``model``, so the graph and the surgery see Conv1D as one layer, not its inner matmul.

    Example:
        >>> tp_pruners(nn.Linear(2, 2))
        {}
    """
    kinds = {type(m) for m in model.modules() if is_conv1d(m)}
    if not kinds:
        return {}
    import torch_pruning as tp

    class Conv1DPruner(tp.pruner.BasePruningFunc):
        """Output units are columns of the weight (and the bias); inputs are its rows."""

        def prune_out_channels(self, layer, idxs):
            keep = sorted(set(range(layer.weight.shape[1])) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
            if layer.bias is not None:
                layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            layer.nf = len(keep)
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = sorted(set(range(layer.weight.shape[0])) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            return layer

        def get_out_channels(self, layer):
            return layer.weight.shape[1]

        def get_in_channels(self, layer):
            return layer.weight.shape[0]

    pruner = Conv1DPruner()
    return {kind: pruner for kind in kinds}
