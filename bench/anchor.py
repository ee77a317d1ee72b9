"""The anchor for iterative pruning: a plain torch.nn.utils.prune AGP loop, with the same budget
as ``pruner.iterate`` (same steps, epochs per step, final epochs, batch size and Adam learning
rate), on digits-mlp, digits-cnn and a small 1-D CNN over synthetic signals
(:func:`prunelab.demos.signals`). Used by bench/quality.py; runnable alone:

    python bench/anchor.py
"""

from __future__ import annotations

import copy
import inspect
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune as torch_prune  # noqa: E402

import prunelab as pl  # noqa: E402

TARGET = 0.8
MAX_BEHIND = 0.01  # iterate may end at most one point below the plain loop


def iterate_defaults() -> dict:
    """``pl.Pruner.iterate``'s defaults, read from its signature (what a user gets)."""
    return {k: v.default for k, v in inspect.signature(pl.Pruner.iterate).parameters.items()
            if v.default is not inspect.Parameter.empty}


def accuracy(model: nn.Module, data) -> float:
    x, y = data.tensors
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def signal_model(seed: int = 0, epochs: int = 20) -> tuple[nn.Module, object, object]:
    """The 1-D CNN trained on the synthetic signals, deterministically (Adam 2e-3, cosine)."""
    train, val = pl.demos.signals(seed=seed)
    torch.manual_seed(seed)
    model = pl.demos.signal_cnn()
    return pl.demos.fit(model, train, epochs=epochs, lr=2e-3, seed=seed), train, val


def plain_agp(model: nn.Module, train, target: float, *, steps: int, epochs_per_step: int, final_epochs: int,
              batch_size: int, lr: float, seed: int = 0) -> nn.Module:
    """The loop people write with torch.nn.utils.prune: at each of ``steps`` steps, global L1
    pruning of every Linear/Conv weight to Zhu & Gupta's cubic schedule (from 0 to ``target``),
    then ``epochs_per_step`` epochs of Adam (one optimizer for the whole run, constant ``lr``,
    the model in train mode), then ``final_epochs`` more. The masks are baked in at the end."""
    torch.manual_seed(seed)
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    total = sum(m.weight.numel() for m, _ in layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    pruned = 0
    for k in range(1, steps + 1):
        goal = round(total * (target + (0 - target) * (1 - k / steps) ** 3))
        if goal > pruned:  # an amount in weights counts among those still unpruned
            torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured, amount=goal - pruned)
            pruned = goal
        for _ in range(epochs_per_step + (final_epochs if k == steps else 0)):
            model.train()
            for x, y in loader:
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    for m, name in layers:
        torch_prune.remove(m, name)
    return model.eval()


def cases():
    """``(name, model, train, val)`` for the demos and the 1-D signal CNN."""
    for name in ("digits-mlp", "digits-cnn"):
        d = pl.demos.load(name)
        yield name, d.model, d.train, d.val
    model, train, val = signal_model()
    yield "signal-cnn (1-D)", model, train, val


def compare(target: float = TARGET) -> list[dict]:
    """One row per case: dense, plain AGP loop and ``iterate(target)`` with its defaults, measured."""
    d = iterate_defaults()
    budget = dict(steps=d["steps"], epochs_per_step=d["epochs_per_step"], final_epochs=d["final_epochs"],
                  batch_size=d["batch_size"], lr=d["lr"])
    rows = []
    for name, model, train, val in cases():
        dense = accuracy(model, val)
        t = time.perf_counter()
        plain = accuracy(plain_agp(copy.deepcopy(model), train, target, **budget), val)
        t_plain = time.perf_counter() - t
        p = pl.Pruner(copy.deepcopy(model), val, train_data=train)
        t = time.perf_counter()
        p.iterate(target, progress=False)
        t_iter = time.perf_counter() - t
        rows.append(dict(model=name, dense=dense, plain=plain, iterate=p.evaluate().accuracy,
                         sparsity=p.overall_sparsity(), params=sum(x.numel() for x in model.parameters()),
                         train=len(train), seconds_plain=t_plain, seconds_iterate=t_iter))
    return rows


def print_rows(rows: list[dict], target: float = TARGET) -> list[tuple[str, bool]]:
    d = iterate_defaults()
    print(f"\niterate({target}) with its defaults vs a plain torch.nn.utils.prune AGP loop, same budget: "
          f"{d['steps']} steps x {d['epochs_per_step']} epochs + {d['final_epochs']} final, batch "
          f"{d['batch_size']}, Adam lr {d['lr']}\n")
    print("| model | params | train samples | dense | plain AGP loop | iterate | iterate - plain | seconds (plain / "
          "iterate) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['train']:,} | {r['dense']:.2%} | {r['plain']:.2%} | "
              f"{r['iterate']:.2%} | {100 * (r['iterate'] - r['plain']):+.2f} pt | {r['seconds_plain']:.1f} / "
              f"{r['seconds_iterate']:.1f} |")
    return [(f"iterate({target}) on {r['model']}: {r['iterate']:.2%} vs plain loop {r['plain']:.2%} (at most "
             f"{100 * MAX_BEHIND:.0f} pt below)", r["iterate"] >= r["plain"] - MAX_BEHIND - 1e-9) for r in rows]


if __name__ == "__main__":
    torch.set_num_threads(1)
    checks = print_rows(compare())
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    sys.exit(0 if all(ok for _, ok in checks) else 1)
