"""One slider-like change (set one layer's sparsity, then evaluate), prunelab vs the naive way.

Naive: deepcopy the model, torch.nn.utils.prune.l1_unstructured on the layer, full evaluation.
prunelab: pruner.prune({layer: s}); pruner.evaluate() (cached ranking, in-place masks, evaluation
resumed from the changed layer's cached input).

Model: a 10-layer MLP (9 hidden layers of 512, about 2.1M parameters) on 1,000 samples whose
labels are the dense model's own predictions. Prints medians per layer position and the ratios,
and checks that both ways report identical accuracy for every change.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import prunelab as pl

SAMPLES, WIDTH, DEPTH, REPEATS = 1000, 512, 9, 15
SPARSITIES = [0.3, 0.5, 0.7, 0.9, 0.6, 0.8]


def build() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    layers, width_in = [], 256
    for _ in range(DEPTH):
        layers += [nn.Linear(width_in, WIDTH), nn.ReLU()]
        width_in = WIDTH
    model = nn.Sequential(*layers, nn.Linear(WIDTH, 10)).eval()
    x = torch.randn(SAMPLES, 256)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def naive_change(model: nn.Module, layer: str, amount: float, x, y) -> float:
    pruned = copy.deepcopy(model)
    torch_prune.l1_unstructured(pruned.get_submodule(layer), "weight", amount=amount)
    with torch.no_grad():
        return float((pruned(x).argmax(1) == y).float().mean())


def time_it(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    torch.set_num_threads(2)
    model, x, y = build()
    pruner = pl.Pruner(model, (x, y))
    params = sum(p.numel() for p in model.parameters())
    names = pruner.layer_names
    positions = {"early": names[0], "middle": names[len(names) // 2], "late": names[-2]}
    print(f"model: {len(names)} prunable layers, {params / 1e6:.2f}M parameters, {SAMPLES} evaluation samples, "
          f"incremental evaluation: {pruner.incremental}")
    pruner.evaluate()  # first evaluation fills the caches, as opening the explorer does
    for layer in positions.values():  # score once per layer, as the first slider touch would
        pruner.prune({layer: 0.1})
    pruner.reset()
    pruner.evaluate()

    print(f"\n| change at | layer | naive median (ms) | prunelab median (ms) | speedup | same accuracy |")
    print("|---|---|---:|---:|---:|---|")
    ratios = {}
    for where, layer in positions.items():
        naive_t, ours_t, same = [], [], True
        for i in range(REPEATS):
            s = SPARSITIES[i % len(SPARSITIES)]
            t_naive, acc_naive = time_it(lambda: naive_change(model, layer, s, x, y))
            t_ours, m = time_it(lambda: pruner.prune({layer: s}).evaluate())
            naive_t.append(t_naive)
            ours_t.append(t_ours)
            same &= abs(acc_naive - m.accuracy) < 1e-12
            pruner.reset()
            pruner.evaluate()
        ratio = statistics.median(naive_t) / statistics.median(ours_t)
        ratios[where] = ratio
        print(f"| {where} | {layer} | {statistics.median(naive_t) * 1e3:.1f} | "
              f"{statistics.median(ours_t) * 1e3:.1f} | {ratio:.1f}x | {'yes' if same else 'NO'} |")
        if not same:
            raise SystemExit("accuracy differs between the naive and the incremental path")
    mean = statistics.mean(ratios.values())
    print(f"\nlate-layer speedup {ratios['late']:.1f}x (target >= 5x); mean {mean:.1f}x (target >= 2x)")


if __name__ == "__main__":
    main()
