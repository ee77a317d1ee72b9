"""Does structured export make models faster, in proportion to the FLOPs it removes?

For the digits CNN demo and a residual CNN with 10 conv layers, remove 50% of the channels of
every layer that can lose them (prunelab structured pruning, then export's physical removal),
and measure CPU latency of the masked dense model vs the shrunk one: same batch, fixed threads,
warm-up, interleaved runs, median. Prints the measured speedup beside the FLOPs ratio and the
ratio between them. Target (residual CNN): speedup >= 0.7 x FLOPs ratio; the exit status is
non-zero when it misses. The tiny digits CNN (8x8 inputs), whose ratio per-op overhead caps, is
reported as it is and is not a target (bench/scale.py measures the ResNet-50 shape).

    python bench/export_speed.py [--threads 1] [--repeats 50]

Run it on a quiet machine: the latencies are medians of interleaved runs, but a machine shared
with other work widens their spread (the IQR is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prunelab as pl  # noqa: E402
from prunelab.export import measure_latency, shrink  # noqa: E402

TARGET = 0.7


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResidualCNN(nn.Module):
    """A small ResNet: stem, two stages of two basic blocks (10 convolutions), linear head."""

    def __init__(self, width: int = 64, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.stage2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))

    def forward(self, x):
        return self.head(self.stage2(self.stage1(self.stem(x))))


def residual_case(samples: int):
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # trained-looking norm statistics, so pruned outputs are non-trivial
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    x = torch.randn(samples, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (samples,), generator=gen)
    return "residual-cnn (10 conv, 32x32)", model, (x, y)


def digits_case(samples: int):
    d = pl.demos.load("digits-cnn")
    x, y = d.val.tensors
    return "digits-cnn (2 conv, 8x8)", d.model, (x[:samples], y[:samples])


FLOP_OPS = ("conv", "addmm", "aten::mm", "matmul", "linear")  # the ops a FLOP count covers


def flop_op_share(model: nn.Module, x: torch.Tensor, threads: int) -> float:
    """Fraction of one forward's CPU time spent in convolutions and matrix products (profiled):
    the rest (pooling, norms, activations) shrinks with the channel count, not with the FLOPs."""
    from torch.profiler import ProfilerActivity, profile

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    stderr = os.dup(2)
    try:
        with open(os.devnull, "w") as null:  # the profiler's C++ start/stop lines are noise here
            os.dup2(null.fileno(), 2)
        with torch.inference_mode():
            model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    model(x)
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)
        torch.set_num_threads(before)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    flop = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in FLOP_OPS))
    return flop / max(total, 1e-9)


class OnnxRuntime(nn.Module):
    """An onnxruntime session behind a module's call, so it is timed like the torch models."""

    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int):
        import io

        import onnxruntime as ort

        from prunelab.export.onnx_export import to_onnx

        super().__init__()
        buffer = io.BytesIO()
        proto = to_onnx(model.cpu().eval(), example).model_proto
        buffer.write(proto.SerializeToString())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def forward(self, x):
        return self.session.run(None, {self.input: x.numpy()})[0]


def run(name, model, data, batch: int, threads: int, repeats: int, target: bool = True) -> float:
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    pruner = pl.Pruner(model, data)
    pruner.prune(0.5, granularity="structured", scope="layer")
    shrunk = shrink(pruner)
    x = pruner.val_inputs[:batch]
    times = measure_latency({"dense": pruner.model, "structured": shrunk.model}, x, threads=threads,
                            repeats=repeats)
    speedup = times["dense"].median / times["structured"].median
    ratio = speedup / shrunk.flops_ratio
    print(f"\n{name}: {convs} conv layers, {shrunk.removed} units removed "
          f"(outputs match the masked model to {shrunk.max_abs_diff:.1e})")
    print(f"  FLOPs per sample   dense {shrunk.flops_before / 1e6:8.2f} M   structured "
          f"{shrunk.flops_after / 1e6:8.2f} M   ratio {shrunk.flops_ratio:.2f}x")
    print(f"  latency            dense {times['dense']}")
    print(f"                structured {times['structured']}")
    verdict = f"{'meets' if ratio >= TARGET else 'MISSES'} the {TARGET} x target" if target else "reported as is, no target"
    print(f"  measured speedup {speedup:.2f}x = {ratio:.3f} x FLOPs ratio ({verdict})")
    try:
        import copy

        example = x[:2].clone()
        runtimes = {"dense": OnnxRuntime(copy.deepcopy(pruner.model), example, threads),
                    "structured": OnnxRuntime(copy.deepcopy(shrunk.model), example, threads)}
        ort_times = measure_latency(runtimes, x, threads=threads, repeats=repeats)
        ort_speedup = ort_times["dense"].median / ort_times["structured"].median
        print(f"  onnxruntime        dense {ort_times['dense']}")
        print(f"                structured {ort_times['structured']}")
        ort_ratio = ort_speedup / shrunk.flops_ratio
        print(f"  onnxruntime speedup {ort_speedup:.2f}x = {ort_ratio:.3f} x FLOPs ratio")
    except ImportError:
        ort_ratio = None
        print("  onnxruntime: not installed (pip install prunelab[onnx]), skipped")
    dense_share = flop_op_share(pruner.model, x, threads)
    small_share = flop_op_share(shrunk.model, x, threads)
    print(f"  time in conv/matmul (what FLOPs count): dense {dense_share:.0%}, structured {small_share:.0%}; "
          "the rest (pooling, norms, activations) shrinks only with the channel count")
    return ratio, ort_ratio


def batch_sweep(name, model, data, threads: int, repeats: int, batches=(1, 32, 360, 2048)) -> None:
    """How the ratio depends on the batch: fixed per-op costs dominate small inputs (8x8 digits),
    and the FLOPs ratio is only approached once each op has enough work."""
    pruner = pl.Pruner(model, data)
    pruner.prune(0.5, granularity="structured", scope="layer")
    shrunk = shrink(pruner)
    x = pruner.val_inputs.repeat(-(-max(batches) // len(pruner.val_inputs)), *[1] * (pruner.val_inputs.dim() - 1))
    print(f"\n{name}, torch, by batch size (FLOPs ratio {shrunk.flops_ratio:.2f}x):")
    for batch in batches:
        t = measure_latency({"dense": pruner.model, "structured": shrunk.model}, x[:batch], threads=threads,
                            repeats=repeats)
        speedup = t["dense"].median / t["structured"].median
        ratio = speedup / shrunk.flops_ratio
        print(f"  batch {batch:5d}: dense {t['dense'].median * 1e3:8.2f} ms  structured "
              f"{t['structured'].median * 1e3:8.2f} ms  speedup {speedup:.2f}x = {ratio:.3f} x FLOPs ratio "
              "(digits-cnn: reported as is)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} timed runs each, median")
    results = {"digits-cnn": run(*digits_case(360), batch=360, threads=args.threads, repeats=args.repeats,
                                 target=False),
               "residual-cnn": run(*residual_case(64), batch=32, threads=args.threads, repeats=args.repeats)}
    batch_sweep(*digits_case(360), threads=args.threads, repeats=args.repeats)
    print(f"\nspeedup / FLOPs ratio (target >= {TARGET} for residual-cnn; digits-cnn reported as is):")
    for name, (torch_ratio, ort_ratio) in results.items():
        ort = "n/a" if ort_ratio is None else f"{ort_ratio:.3f}"
        print(f"  {name:13s} torch {torch_ratio:.3f}   onnxruntime {ort}")
    return 0 if results["residual-cnn"][0] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
