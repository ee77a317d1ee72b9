"""Built-in demos: small trained models on scikit-learn's bundled 8x8 digits (no network needed).

``load(name)`` builds a fresh model and loads weights shipped with the package, so every call is
independent, identical and takes well under a second. ``train(name)`` is how those weights were
made (deterministic); ``python -m prunelab.demos`` regenerates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

WEIGHTS = Path(__file__).parent / "demo_weights"


@dataclass
class Demo:
    """A trained model with its data. ``train``/``val`` are TensorDatasets of (input, class)."""

    name: str
    model: nn.Module
    train: TensorDataset
    val: TensorDataset
    description: str
    image_shape: tuple[int, int] = (8, 8)
    classes: list[str] = field(default_factory=lambda: [str(d) for d in range(10)])

    def __repr__(self) -> str:
        return (f"Demo({self.name!r}: {self.description}; {len(self.train)} train / "
                f"{len(self.val)} validation samples)")


def _mlp() -> nn.Module:
    # LeNet-300-100's shape on 64 inputs. Sequential, so layers are named "0", "2", "4".
    return nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


_BUILDERS = {
    "digits-mlp": (_mlp, "MLP 64-300-100-10 (LeNet-300-100 shape)", (-1, 64)),
    "digits-cnn": (_cnn, "CNN conv16-conv32-fc64-fc10 with BatchNorm", (-1, 1, 8, 8)),
}
NAMES = tuple(_BUILDERS)


def digits(shape: tuple[int, ...] = (-1, 64)) -> tuple[TensorDataset, TensorDataset]:
    """The digits split used by every demo: 80% train, 20% validation, stratified, fixed.

    The split (scikit-learn's ``train_test_split(..., stratify=y, random_state=0)``) is stored
    beside the weights and the images are read from scikit-learn's bundled CSV, so loading a
    demo does not import scikit-learn (seconds)."""
    from safetensors.torch import load_file

    images, labels = _digits_arrays()
    split = load_file(WEIGHTS / "digits-split.safetensors")
    x = torch.tensor(images, dtype=torch.float32) / 16.0
    y = torch.tensor(labels, dtype=torch.long)
    x = x.reshape(shape)
    return (TensorDataset(x[split["train"]], y[split["train"]]), TensorDataset(x[split["val"]], y[split["val"]]))


def _digits_arrays():
    """(images as 1797 x 64 floats, labels) exactly as ``sklearn.datasets.load_digits``."""
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.exists():  # another scikit-learn layout: ask it
        from sklearn.datasets import load_digits

        data = load_digits()
        return data.data, data.target
    raw = np.loadtxt(path, delimiter=",")
    return raw[:, :-1], raw[:, -1].astype(int)


def _split_indices() -> dict[str, torch.Tensor]:
    """The stored split, as scikit-learn makes it (used to write digits-split.safetensors)."""
    from sklearn.model_selection import train_test_split

    _, labels = _digits_arrays()
    train_idx, val_idx = train_test_split(range(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    return {"train": torch.tensor(train_idx, dtype=torch.int64), "val": torch.tensor(val_idx, dtype=torch.int64)}


SIGNAL_CLASSES = 8
SIGNAL_LENGTH = 64


def signal_cnn() -> nn.Module:
    """A small 1-D CNN for :func:`signals` (three Conv1d layers and a Linear, 4,672 parameters),
    randomly initialised (seed it first for a fixed start).

    Example:
        >>> sum(p.numel() for p in signal_cnn().parameters())
        4672
    """
    return nn.Sequential(
        nn.Conv1d(1, 16, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(16, 24, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(24, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
        nn.Flatten(), nn.Linear(32, SIGNAL_CLASSES),
    )


def signals(train: int = 4000, val: int = 1000, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Synthetic 1-D signals, deterministic from ``seed``: class ``k`` of :data:`SIGNAL_CLASSES`
    is a sinusoid of ``2 + 0.75 k`` cycles per window (random phase, amplitude 0.5 to 1.5), plus
    a distractor sinusoid of random frequency and Gaussian noise (sigma 0.8); classes balanced.

    Args:
        train, val: how many training and validation signals.
        seed: the generator's seed (the same seed gives the same signals, bit for bit).

    Returns:
        ``(train, val)`` TensorDatasets of ``(signals (n, 1, 64), class indices)``.

    Example:
        >>> train, val = signals(); train.tensors[0].shape
        torch.Size([4000, 1, 64])
    """
    gen = torch.Generator().manual_seed(seed)
    n = train + val
    y = torch.arange(n) % SIGNAL_CLASSES
    y = y[torch.randperm(n, generator=gen)]
    t = torch.arange(SIGNAL_LENGTH, dtype=torch.float64) / SIGNAL_LENGTH
    freq = (2 + 0.75 * y.double()).unsqueeze(1)
    phase = 2 * torch.pi * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    amp = 0.5 + torch.rand(n, 1, generator=gen, dtype=torch.float64)
    other = 1 + 9 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    other_phase = 2 * torch.pi * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    x = amp * torch.sin(2 * torch.pi * freq * t + phase) + 0.7 * torch.sin(2 * torch.pi * other * t + other_phase)
    x = x + 0.8 * torch.randn(n, SIGNAL_LENGTH, generator=gen, dtype=torch.float64)
    x = x.float().unsqueeze(1)
    return TensorDataset(x[:train], y[:train]), TensorDataset(x[train:], y[train:])


def _check(name: str):
    if name not in _BUILDERS:
        import difflib

        close = difflib.get_close_matches(name, NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown demo {name!r}.{hint} Demos: {list(NAMES)}.")


def architecture(name: str = "digits-mlp") -> nn.Module:
    """A fresh, untrained model of a demo's architecture (for loading exported weights into).

    Args:
        name: one of :data:`NAMES`.

    Returns:
        The nn.Module, with random initial weights.

    Example:
        >>> pl.load_structured("small", pl.demos.architecture("digits-cnn"))  # doctest: +SKIP
    """
    _check(name)
    return _BUILDERS[name][0]()


def load(name: str = "digits-mlp") -> Demo:
    """A fresh trained demo model with its train and validation data."""
    from safetensors.torch import load_file

    _check(name)
    build, description, shape = _BUILDERS[name]
    model = build()
    model.load_state_dict(load_file(WEIGHTS / f"{name}.safetensors"))
    model.eval()
    train_set, val_set = digits(shape)
    return Demo(name, model, train_set, val_set, description)


def train(name: str, epochs: int = 40, lr: float = 2e-3, seed: int = 0) -> nn.Module:
    """Train a demo model from scratch, deterministically (same seed, same weights on one machine)."""
    _check(name)
    build, _, shape = _BUILDERS[name]
    torch.manual_seed(seed)
    model = build()
    return fit(model, digits(shape)[0], epochs=epochs, lr=lr, seed=seed)


def fit(model: nn.Module, train_set, *, epochs: int, lr: float = 2e-3, seed: int = 0) -> nn.Module:
    """Train ``model`` in place on ``train_set`` as the demos are trained (Adam, cosine schedule,
    batches of 32 shuffled by ``seed``) and return it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
    return model.eval()


def accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    x, y = dataset.tensors
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _regenerate():
    from safetensors.torch import save_file

    WEIGHTS.mkdir(exist_ok=True)
    save_file(_split_indices(), WEIGHTS / "digits-split.safetensors")
    for name in NAMES:
        model = train(name)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, WEIGHTS / f"{name}.safetensors")
        print(f"{name}: validation accuracy {accuracy(model, digits(_BUILDERS[name][2])[1]):.2%}")


if __name__ == "__main__":
    _regenerate()
