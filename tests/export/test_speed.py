"""Structured export is faster where bench/export_speed.py says so: a convolutional network with
half of its channels removed runs measurably faster than the masked dense one (the bench measures
the ratio to the FLOPs removed; this checks the direction, with a margin a busy machine keeps)."""

import pytest
import torch
from torch import nn

import prunelab as pl
from prunelab.export import measure_latency, shrink


def conv_stack(width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )


@pytest.mark.slow
def test_half_the_channels_runs_faster_than_the_masked_model():
    x = torch.randn(64, 3, 24, 24)
    pruner = pl.Pruner(conv_stack(), (x, torch.randint(0, 10, (64,))))
    pruner.prune(0.5, granularity="structured", scope="layer")
    shrunk = shrink(pruner)
    assert shrunk.flops_ratio > 2.5  # the inner convolutions lose three quarters of their work (3.9x here)
    times = measure_latency({"dense": pruner.model, "structured": shrunk.model}, x[:16], threads=1, repeats=15)
    speedup = times["dense"].median / times["structured"].median
    assert speedup > 1.5, f"structured export ran {speedup:.2f}x the masked model (FLOPs ratio {shrunk.flops_ratio:.2f}x)"
