"""Small models of every shape the core must handle, tiny random datasets, and state checks
(the fixtures that serve them are in conftest.py).

Every model here is built fresh per test from a fixed seed, so tests never share state, and
each is small enough that building, tracing and evaluating it takes milliseconds.
"""

from __future__ import annotations

import torch
from torch import nn

CLASSES = 3


class ResidualCNN(nn.Module):
    """stem -> [a -> bn -> relu -> b -> bn] + stem -> relu -> head: ``stem`` and ``block.b`` are
    coupled by the addition, so structured pruning must remove the same channels of both."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(6)
        self.a = nn.Conv2d(6, 5, 3, padding=1)
        self.a_bn = nn.BatchNorm2d(5)
        self.b = nn.Conv2d(5, 6, 3, padding=1)
        self.b_bn = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x):
        s = torch.relu(self.stem_bn(self.stem(x)))
        h = torch.relu(self.a_bn(self.a(s)))
        h = self.b_bn(self.b(h))
        h = torch.relu(h + s)
        return self.head(self.pool(h).flatten(1))


class ConcatCNN(nn.Module):
    """Two branches concatenated on channels, then a conv that reads the concatenation."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(1, 3, 3, padding=1)
        self.right = nn.Conv2d(1, 5, 3, padding=1)
        self.mix = nn.Conv2d(8, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, x):
        h = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        h = torch.relu(self.mix(h))
        return self.head(self.pool(h).flatten(1))


class AttentionNet(nn.Module):
    """Tokens -> Linear embed -> MultiheadAttention -> mean over tokens -> Linear head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        h = self.embed(x)
        h, _ = self.attn(h, h, h)
        return self.head(h.mean(1))


class BranchingMLP(nn.Module):
    """Data-dependent Python control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 12)
        self.out = nn.Linear(12, CLASSES)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if h.sum() > 0:  # depends on the data: symbolic tracing fails here
            h = h * 1.0
        return self.out(torch.relu(self.fc2(h)))


def make_mlp(inplace: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=inplace), nn.Linear(16, 12),
                         nn.ReLU(inplace=inplace), nn.Linear(12, CLASSES))


def make_bn_cnn(inplace: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=inplace),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 10), nn.ReLU(inplace=inplace), nn.Linear(10, CLASSES),
    )


def make_residual_cnn() -> nn.Module:
    torch.manual_seed(0)
    return ResidualCNN()


def make_concat_cnn() -> nn.Module:
    torch.manual_seed(0)
    return ConcatCNN()


def make_depthwise_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU(),  # depthwise
        nn.Conv2d(4, 6, 1), nn.ReLU(),  # pointwise
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, CLASSES),
    )


def make_attention_net() -> nn.Module:
    torch.manual_seed(0)
    return AttentionNet()


def make_branching_mlp() -> nn.Module:
    torch.manual_seed(0)
    return BranchingMLP()


def random_data(shape: tuple[int, ...], n: int = 48, classes: int = CLASSES, seed: int = 1):
    """(inputs, class-index targets) with every class present."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=gen)
    y = torch.arange(n) % classes
    return x, y[torch.randperm(n, generator=gen)]


VECTOR = (8,)
IMAGE = (1, 8, 8)
TOKENS = (5, 4)

# name -> (builder, input shape per sample)
MODELS = {
    "mlp": (make_mlp, VECTOR),
    "bn_cnn": (make_bn_cnn, IMAGE),
    "residual_cnn": (make_residual_cnn, IMAGE),
    "concat_cnn": (make_concat_cnn, IMAGE),
    "depthwise_cnn": (make_depthwise_cnn, IMAGE),
    "attention": (make_attention_net, TOKENS),
}


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer, for bitwise comparisons."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (so NaN equals NaN and -0.0 differs from 0.0)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.detach().reshape(-1).view(torch.uint8), b.detach().reshape(-1).view(torch.uint8)))


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert bitwise_equal(after[k], v), f"{k} changed"
