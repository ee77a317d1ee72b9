"""Format "structured": a physically smaller network that is also faster.

Units (output neurons, conv filters) that do nothing are removed, and the layers around them
shrink to match: their bias and norm entries, the input columns of the layers they feed, and
the same units of layers tied to them by a residual addition (torch-pruning's dependency graph
does the surgery, so concatenations and flattening map correctly). A unit does nothing when
structured pruning removed it, or when every parameter that makes its output (weight row, bias,
norm scale and shift, across coupled layers) is zero and what follows maps zero to zero. A unit
with zero weights but a nonzero bias still outputs that bias, so it stays.

The surgery runs on a deep copy: the user's model is never modified. The shrunk network's
outputs are checked against the masked model on validation inputs (to 1e-5, relative to the
output scale) and the export fails with the culprit layers named if they differ (a LayerNorm that
normalises over the removed units, for example).

Two files, neither pickled:
- ``<name>.safetensors``: the shrunk state_dict plus, as JSON in the header, the new shape of
  every changed module. :func:`load_structured` rebuilds the network from a fresh instance of the
  original class (built with the same constructor arguments).
- ``<name>.pt2``: a ``torch.export`` program (graph + weights), loadable without the user's class:
  ``pl.load_structured(path)`` or ``pl.load_program(path)``. Its batch size is dynamic.

Two deployment steps run on the shrunk copy, each kept only when the outputs stay within the
tolerance, and each said in the export's details: BatchNorms fold into the layer before them, and
convolution weights are stored channels-last, the layout oneDNN's CPU kernels compute in (no
reorder per call: 1.2-1.8x faster for a ResNet-50 shape here, more at batch 32 than at batch 1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.flops import count_flops
from ..core.inputs import Inputs, forward, plain_example, select_output
from ..core.heads import cut_heads
from ..core.kinds import tp_pruners
from ..core.files import atomic_paths, load_safetensors, safetensors_bytes, write_file
from .folding import channels_last, fold_batchnorms, refold
from .program import load_program, program_bytes, program_module

KIND = "structured"
CHECK_SAMPLES = 256


@dataclass
class Shrunk:
    """The physically pruned network and what was removed.

    ``units`` maps each shrunk layer to ``(units before, units after)``; ``max_abs_diff`` is the
    largest output difference from the masked model on ``checked`` validation samples; ``folded``
    names the BatchNorms folded into the layer before them (:mod:`.folding`); ``channels_last``
    says the 4-d weights are stored channels-last (:func:`~.folding.channels_last`).
    """

    model: nn.Module
    units: dict[str, tuple[int, int]]
    max_abs_diff: float
    checked: int
    flops_before: int = 0
    flops_after: int = 0
    module_attrs: dict[str, dict] = field(default_factory=dict)
    folded: list[list[str]] = field(default_factory=list)  # [[batchnorm, into conv/linear], ...]
    channels_last: bool = False

    @property
    def removed(self) -> int:
        return sum(b - a for b, a in self.units.values())

    @property
    def flops_ratio(self) -> float:
        return self.flops_before / max(self.flops_after, 1)


# ---------------------------------------------------------------------------- which units go

def removable_units(pruner, silent: bool = True) -> dict[str, torch.Tensor]:
    """``{root layer: bool vector over its units, True = remove}`` for every unit group with
    something to remove: the units structured pruning dropped and, with ``silent``, the units
    whose output-making parameters are all zero. Coupled layers share their root's vector."""
    groups = pruner.unit_groups()
    params = dict(pruner.model.named_parameters())
    plans = pruner.plans
    out = {}
    for group in {id(g): g for g in groups.values()}.values():
        root = group.layers[0]
        remove = torch.zeros(group.units, dtype=torch.bool)
        plan = plans.get(root)
        if plan is not None and plan.granularity == "structured":
            remove |= ~plan.keep.cpu()
        if silent:
            quiet = torch.ones(group.units, dtype=torch.bool)  # every output-making entry is zero
            for s in group.slices:
                if s.dim != 0:
                    continue
                rows = params[s.param].detach().index_select(0, s.index.to(params[s.param].device))
                nonzero_rows = (rows.reshape(len(s.index), -1) != 0).any(1).cpu()
                quiet[s.root[nonzero_rows]] = False
            remove |= quiet
        if remove.all():  # a layer needs at least one unit; a silent one changes nothing
            remove[0] = False
        if remove.any():
            out[root] = remove
    return out


# ---------------------------------------------------------------------------- surgery

def example_inputs(pruner) -> torch.Tensor:
    """Two validation inputs (repeated when there is one) to trace ``pruner.model`` with.

    Returns:
        A tensor of two inputs (Inputs for keyword inputs), a copy (a view would drag the whole
        validation set into a .pt2).

    Example:
        >>> example_inputs(pruner).shape[0]
        2
    """
    x = pruner.val_inputs[:2].clone()  # a copy: a view would drag the whole validation set into the .pt2
    if isinstance(x, Inputs):
        return x if len(x) == 2 else Inputs.cat([x, x])
    return x if len(x) == 2 else x.expand(2, *x.shape[1:]).clone()


def _cut(model: nn.Module, example: torch.Tensor, remove: dict[str, torch.Tensor], groups, output=None) -> nn.Module:
    """Remove the given units from ``model`` in place: attention heads (core/heads.py), then the
    rest with torch-pruning (tracing the output ``output`` selects)."""
    import torch_pruning as tp

    for root in [r for r in remove if groups[r].heads is not None]:
        cut_heads(model, groups[root].heads, ~remove.pop(root))
    if not remove:
        return model
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=plain_example(example), verbose=False,
                                                      output_transform=lambda out: select_output(out, output),
                                                      customized_pruners=tp_pruners(model))
    for root, mask in remove.items():
        module = model.get_submodule(root)
        fn = graph.get_pruner_of_module(module).prune_out_channels
        group = graph.get_pruning_group(module, fn, mask.nonzero().flatten().tolist())
        group.prune()
    return model


@torch.no_grad()
def exact_outputs(model: nn.Module, x: torch.Tensor, output=None) -> torch.Tensor:
    """``model(x)`` in eval mode (its mode restored after) in full fp32: on GPUs TF32 convolutions
    and matrix products (cuDNN's default) round differently for different shapes, which would hide
    a real mismatch or fake one (seen: 1.4e-3 on an H200 for a correct cut). ``output``: the
    Pruner's selector (:func:`prunelab.core.inputs.forward`).

    Returns:
        The outputs.

    Example:
        >>> reference = exact_outputs(pruner.model, pruner.val_inputs[:256])
    """
    was = model.training
    model.eval()
    cudnn_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            return forward(model, x, output)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
        model.train(was)


def _tolerance(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, float(reference.abs().max()))


def shrink(pruner) -> Shrunk:
    """A deep copy of ``pruner.model`` with every removable unit physically removed, checked
    against the masked model. Raises ValueError (naming the layers) when outputs differ."""
    example = example_inputs(pruner)
    x = pruner.val_inputs[:CHECK_SAMPLES]
    reference = exact_outputs(pruner.model, x, pruner.output)
    for silent in (True, False):
        # Units pruned structurally always cut cleanly (their consumers' input columns are masked
        # too). A silent unit outputs f(0), which is not 0 after sigmoid, say: if removing the
        # silent ones changes the outputs, they stay.
        remove = removable_units(pruner, silent=silent)
        small = _cut(copy.deepcopy(pruner.model).eval(), example, dict(remove), pruner.unit_groups(), pruner.output)
        got = exact_outputs(small, x, pruner.output)
        diff = float((got - reference).abs().max()) if got.shape == reference.shape else float("inf")
        if diff <= _tolerance(reference):
            break
    else:
        raise ValueError(_diagnose(pruner, example, x, reference, remove, diff))
    units = {}
    for layer in pruner.layers:
        after = small.get_parameter(layer.weight_name).shape[layer.out_dim]
        if after != layer.units:
            units[layer.name] = (layer.units, after)
    attrs = _changed_attrs(pruner.model, small)
    same = lambda m: float((exact_outputs(m, x, pruner.output) - reference).abs().max()) <= _tolerance(reference)
    small, folded = fold_batchnorms(small, same)
    small, last = channels_last(small, same)
    before_flops, _ = count_flops(pruner.model, example[:1], [])
    after_flops, _ = count_flops(small, example[:1], [])
    gone = {bn for bn, _ in folded}  # a folded BatchNorm is an Identity now: no spec, no tensors
    return Shrunk(small, units, diff, len(x), before_flops, after_flops,
                  {k: v for k, v in attrs.items() if k not in gone}, folded, last)


def _diagnose(pruner, example, x, reference, remove, diff) -> str:
    culprits = []
    for root, mask in remove.items():
        one = _cut(copy.deepcopy(pruner.model).eval(), example, {root: mask}, pruner.unit_groups(), pruner.output)
        got = exact_outputs(one, x, pruner.output)
        if got.shape != reference.shape or float((got - reference).abs().max()) > _tolerance(reference):
            culprits.append(root)
    where = f" Removing the units of layer(s) {culprits} alone already changes them." if culprits else ""
    return (f"structured export would change the model's outputs (max difference {diff:.3g} from the masked "
            f"model on {len(x)} validation samples), so it was not written.{where} This happens when what "
            "follows the removed units mixes them with the units that stay, as a LayerNorm over those "
            "channels does. Prune those layers unstructured instead (their units then stay), or export "
            "'sparse' or 'state_dict'.")


def _changed_attrs(original: nn.Module, small: nn.Module) -> dict[str, dict]:
    """Per module whose tensors or int attributes changed: the int/tuple attributes the cut changed
    (in_features, out_channels, num_features, normalized_shape, groups, num_attention_heads...)."""
    out = {}
    originals = dict(original.named_modules())
    for name, m in small.named_modules():
        o = originals[name]
        tensors = {**dict(m.named_parameters(recurse=False)), **dict(m.named_buffers(recurse=False))}
        old = {**dict(o.named_parameters(recurse=False)), **dict(o.named_buffers(recurse=False))}
        same = all(t is None or old.get(k) is None or t.shape == old[k].shape for k, t in tensors.items())
        attrs = {}
        for k, v in vars(m).items():
            if k.startswith("_") or isinstance(v, bool) or not isinstance(v, (int, tuple)):
                continue
            if isinstance(v, tuple) and not all(isinstance(i, int) for i in v):
                continue
            if getattr(o, k, None) != v:
                attrs[k] = list(v) if isinstance(v, tuple) else v
        if same and not attrs:  # an attention module holds no tensors, but its head counts change
            continue
        out[name] = {"type": type(m).__name__, "attrs": attrs,
                     "shapes": {k: list(t.shape) for k, t in tensors.items() if t is not None}}
    return out


# ---------------------------------------------------------------------------- files

def structured_paths(path) -> tuple[Path, Path]:
    """(``<name>.safetensors``, ``<name>.pt2``) for ``path`` with or without either suffix."""
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".safetensors", ".pt2") else p
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".pt2")


def save_structured(pruner, path) -> tuple[tuple[Path, Path], Shrunk]:
    """Shrink ``pruner``'s model and write both files (all or nothing)."""
    shrunk = shrink(pruner)
    weights_path, program_path = structured_paths(path)
    cpu = shrunk.model.cpu()
    info = {"model_class": type(pruner.model).__qualname__, "modules": shrunk.module_attrs,
            "units": {k: list(v) for k, v in shrunk.units.items()}, "program": program_path.name,
            "max_abs_diff": shrunk.max_abs_diff, "folded": shrunk.folded, "channels_last": shrunk.channels_last}
    program = program_bytes(cpu, example_inputs(pruner).cpu(), info, pruner.output)
    weights = safetensors_bytes(cpu.state_dict(), KIND, info)
    with atomic_paths(weights_path, program_path) as (tmp_weights, tmp_program):
        write_file(tmp_weights, weights)
        write_file(tmp_program, program)
    return (weights_path, program_path), shrunk


def load_structured(path, model: nn.Module | None = None) -> nn.Module:
    """Load a "structured" export.

    Args:
        path: the ``.safetensors`` or ``.pt2`` file written by ``export(path, "structured")``, or
            the name without suffix.
        model: a fresh instance of the exported model's class, built with the same constructor
            arguments (its forward must not hard-code channel counts; ``nn.Flatten`` is fine).
            Its layers are resized in place to the exported shapes, the weights loaded, and it is
            returned. Without it, the class-free ``torch.export`` program in the ``.pt2`` file is
            loaded and its module returned.

    Returns:
        The shrunk network in eval mode: ``model`` itself, resized, or the program's module.

    Raises:
        ValueError: a truncated, damaged or foreign file, or a ``model`` that does not fit (the
            error names the file and says to pass a fresh instance of the exported class).
        OSError: the file cannot be read.

    Example:
        >>> small = pl.load_structured("model", MyNet())      # the class, resized
        >>> program = pl.load_structured("model.pt2")         # no class needed
    """
    weights_path, program_path = structured_paths(path)
    if model is None:
        return program_module(load_program(program_path))
    tensors, info = load_safetensors(weights_path, KIND, "prunelab.load_structured")
    expected = resize_modules(weights_path, model, tensors, info)
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # a stored tensor of another shape than the model's
        raise ValueError(f"{weights_path} does not fit the given {type(model).__name__} ({str(e).splitlines()[-1]}"
                         f"): pass a fresh instance of {expected} built with the same arguments.") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{weights_path} does not fit the given {type(model).__name__} (missing: "
                         f"{result.missing_keys[:3]}, unexpected: {result.unexpected_keys[:3]}): pass a fresh "
                         f"instance of {expected} built with the same arguments.")
    if info.get("channels_last") is True:  # stored contiguous (safetensors), run as exported
        model.to(memory_format=torch.channels_last)
    return model.eval()


def resize_modules(path, model: nn.Module, tensors: dict, info: dict) -> str | None:
    """Resize ``model``'s modules in place to the shapes an export's header gives (``info["modules"]``,
    each spec checked against the stored ``tensors`` first: a bad one leaves the model untouched).

    Returns:
        The exported model's class name (for messages). Raises ValueError for a spec that does not fit.
    """
    expected = info.get("model_class")
    mods = info.get("modules", {})
    if not isinstance(mods, dict) or not all(isinstance(spec, dict) for spec in mods.values()):
        raise ValueError(f"{path} is damaged: its module list is not a map of module specs. Export it again.")
    named = dict(model.named_modules())
    missing = [n for n in mods if n not in named]
    if missing:
        raise ValueError(f"{path} was exported from a {expected} with modules {missing[:3]} that the "
                         f"given {type(model).__name__} lacks: pass a fresh instance of {expected} built with "
                         "the same arguments.")
    for name, spec in mods.items():
        _check_spec(path, name, spec, named[name], tensors, expected)
    refold(model, info.get("folded", []), {k: t.shape for k, t in tensors.items()})  # checks, then folds
    for name, spec in mods.items():  # every spec checked first: a bad one leaves the model untouched
        _resize(named[name], spec)
    return expected


def _check_spec(path: Path, name: str, spec: dict, module: nn.Module, tensors: dict, expected) -> None:
    """A module's spec from the header is applied only when it is what an export writes: its type,
    existing int (or int-tuple) attributes, and the shapes of the tensors stored for it."""
    if spec.get("type") != type(module).__name__:
        raise ValueError(f"module {name!r} is a {type(module).__name__} here but was a {spec.get('type')} when "
                         f"exported: pass a fresh instance of {expected}.")
    attrs, shapes = spec.get("attrs"), spec.get("shapes")
    if not isinstance(attrs, dict) or not isinstance(shapes, dict):
        raise ValueError(f"{path} is damaged: the spec of module {name!r} has no attrs or shapes. Export it again.")
    own = vars(module)
    for k, v in attrs.items():
        plain = isinstance(v, int) and not isinstance(v, bool)
        ints = isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
        if k.startswith("_") or not isinstance(own.get(k), (int, tuple)) or isinstance(own.get(k), bool) \
                or not (plain or ints):
            raise ValueError(f"{path}: the spec of module {name!r} sets {k!r} to {v!r}, which an export never "
                             f"writes for a {type(module).__name__}. Export it again.")
    tensors_here = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
    for k, shape in shapes.items():
        stored = tensors.get(f"{name}.{k}" if name else k)
        if k not in tensors_here or stored is None or list(stored.shape) != shape:
            raise ValueError(f"{path} is damaged: module {name!r} says {k!r} has shape {shape!r}, which does not "
                             "match the tensors stored. Export it again.")


def _resize(module: nn.Module, spec: dict) -> None:
    for k, v in spec["attrs"].items():
        old = getattr(module, k, None)
        setattr(module, k, tuple(v) if isinstance(old, tuple) or isinstance(v, list) else v)
    for k, shape in spec["shapes"].items():
        params, buffers = dict(module.named_parameters(recurse=False)), dict(module.named_buffers(recurse=False))
        if k in params:  # nn.Module.__setattr__ replaces a registered parameter or buffer of that name
            old = params[k]
            setattr(module, k, nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device),
                                            requires_grad=old.requires_grad))
        elif k in buffers:
            old = buffers[k]
            setattr(module, k, torch.empty(shape, dtype=old.dtype, device=old.device))
