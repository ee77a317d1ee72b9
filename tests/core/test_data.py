"""What users pass as data: DataLoader, Dataset or (inputs, targets), with clear errors."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from core_models import VECTOR, make_mlp, random_data
from prunelab import Pruner
from prunelab.core.data import as_dataset, batches, first_samples, materialize, stratified_subset


@pytest.fixture
def pair():
    return random_data(VECTOR, n=30)


class Pairs(Dataset):
    """A map-style dataset that records which items were read."""

    def __init__(self, x, y):
        self.x, self.y, self.read = x, y, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.read.append(i)
        return self.x[i], self.y[i]


def test_every_accepted_form_gives_the_same_tensors(pair):
    x, y = pair
    for data in (pair, list(pair), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=7),
                 Pairs(x, y)):
        mx, my = materialize(data, "val_data")
        assert torch.equal(mx, x) and torch.equal(my, y)


def test_a_tensor_pair_is_used_without_copying(pair):
    mx, my = materialize(pair, "val_data")
    assert mx is pair[0] and my is pair[1]


def test_as_dataset_views_without_copying(pair):
    ds = TensorDataset(*pair)
    assert as_dataset(ds, "d") is ds and as_dataset(DataLoader(ds), "d") is ds
    view = as_dataset(pair, "d")
    assert view.tensors[0] is pair[0]


@pytest.mark.parametrize("data, error, message", [
    ([1, 2, 3], TypeError, "val_data: got list. Pass a DataLoader"),
    ("digits", TypeError, "val_data: got str"),
    ((torch.zeros(3, 2), torch.zeros(4)), ValueError, "3 inputs but 4 targets"),
    ((torch.zeros(0, 2), torch.zeros(0)), ValueError, "val_data is empty"),
    (TensorDataset(torch.zeros(0, 2), torch.zeros(0)), ValueError, "val_data is empty"),
    (TensorDataset(torch.zeros(4, 2)), TypeError, r"each item must be an \(input, target\) pair"),
])
def test_bad_data_says_what_to_pass(data, error, message):
    with pytest.raises(error, match=message):
        materialize(data, "val_data")


def test_data_that_cannot_reach_the_models_device_is_a_clear_error():
    with pytest.raises(ValueError, match="lives on meta and cannot be moved to the model's device cpu"):
        materialize((torch.zeros(3, 2, device="meta"), torch.zeros(3)), "val_data", device="cpu")


def test_max_samples_takes_a_fixed_class_stratified_subset():
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    x = torch.arange(100).float()[:, None]
    sx, sy = materialize((x, y), "val_data", max_samples=20, seed=5)
    assert torch.bincount(sy).tolist() == [12, 6, 2]
    assert torch.equal(sx[:, 0].long(), sx[:, 0].long().sort().values)  # original order kept
    again, _ = materialize((x, y), "val_data", max_samples=20, seed=5)
    other, _ = materialize((x, y), "val_data", max_samples=20, seed=6)
    assert torch.equal(again, sx) and not torch.equal(other, sx)


def test_stratified_subset_of_regression_targets_is_uniform():
    idx = stratified_subset(torch.randn(50, 2), 10, seed=0)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10 and torch.equal(idx, idx.sort().values)


def test_batches_cover_the_data_in_order(pair):
    x, y = pair
    chunks = list(batches(x, y, 8))
    assert [len(b[0]) for b in chunks] == [8, 8, 8, 6]
    assert torch.equal(torch.cat([b[0] for b in chunks]), x)


def test_first_samples_reads_only_what_it_needs(pair):
    ds = Pairs(*pair)
    x, y = first_samples(ds, 5, "train_data")
    assert len(x) == 5 and sorted(set(ds.read)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="train_data is empty"):
        first_samples(Pairs(pair[0][:0], pair[1][:0]), 5, "train_data")


def test_pruner_measures_the_same_whatever_form_the_data_takes(pair):
    x, y = pair
    a = Pruner(make_mlp(), pair).evaluate()
    b = Pruner(make_mlp(), DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)).evaluate()
    assert a.accuracy == b.accuracy and a.loss == pytest.approx(b.loss) and a.samples == b.samples == 30
