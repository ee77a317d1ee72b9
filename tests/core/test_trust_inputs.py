"""Trust, the inputs (issue 10, the raw crashes and unclear messages of the core): each bad input
is a clear error at construction or first use, naming what to pass."""

import pytest
import torch
from torch import nn

from core_models import assert_same_state, make_bn_cnn, make_mlp, state_of
from prunelab import Pruner


@pytest.mark.parametrize("value", [0, -1, "100", 2.5, True])
def test_eval_samples_must_be_a_positive_whole_number(value, mlp, mlp_data):
    with pytest.raises(ValueError, match=rf"eval_samples must be a positive whole number \(or None for all\), got {value!r}"):
        Pruner(mlp, mlp_data, eval_samples=value)


@pytest.mark.parametrize("value", [0, -8, "64", None])
def test_batch_size_must_be_a_positive_whole_number(value, mlp, mlp_data):
    with pytest.raises(ValueError, match=rf"batch_size must be a positive whole number, got {value!r}"):
        Pruner(mlp, mlp_data, batch_size=value)


def test_nan_or_inf_inputs_are_an_error_with_the_count_of_bad_rows(mlp, mlp_data):
    x, y = mlp_data
    x = x.clone()
    x[5, 0], x[9, 3] = float("nan"), float("inf")
    before = state_of(mlp)
    with pytest.raises(ValueError, match=r"2 of 48 rows with NaN or inf inputs \(rows \[5, 9\]\).*count as class 0"):
        Pruner(mlp, (x, y))
    assert_same_state(mlp, before)


def test_inputs_are_checked_in_chunks_and_every_bad_row_is_still_found(mlp, mlp_data, monkeypatch):
    from prunelab.core import datachecks

    x, y = mlp_data
    x = x.clone()
    x[0, 0], x[13, 1], x[47, 2] = float("nan"), float("-inf"), float("nan")  # first, middle and last chunks
    row = x[0].numel() * x.element_size()
    monkeypatch.setattr(datachecks, "CHECK_BYTES", 5 * row)  # 48 rows in ten chunks, the last short
    with pytest.raises(ValueError, match=r"3 of 48 rows with NaN or inf inputs \(rows \[0, 13, 47\]\)"):
        Pruner(mlp, (x, y))


@pytest.mark.parametrize("returned", [None, "0.9", torch.ones(3)])
def test_a_metric_that_is_not_a_real_number_is_a_clear_error_at_first_use(returned, mlp, mlp_data):
    def odd(outputs, targets):
        return returned

    pruner = Pruner(mlp, mlp_data, metric=odd)
    with pytest.raises(TypeError, match=r"the metric odd returned .*not one real number: pass metric="):
        pruner.evaluate()
    # nothing was cached from the failure: a working metric then measures
    pruner.metric = lambda outputs, targets: torch.tensor(0.25)
    assert pruner.evaluate().accuracy == 0.25


def test_a_loss_that_does_not_reduce_is_refused_at_construction(mlp, mlp_data):
    with pytest.raises(TypeError, match=r"the loss returned a tensor shaped \(2,\).*reduction='mean', not 'none'"):
        Pruner(mlp, mlp_data, loss=nn.CrossEntropyLoss(reduction="none"))


def test_a_loss_that_fails_is_refused_at_construction(mlp, mlp_data):
    def broken(outputs, targets):
        raise KeyError("labels")

    with pytest.raises(ValueError, match=r"the loss failed on two validation samples \(KeyError"):
        Pruner(mlp, mlp_data, loss=broken)


def test_the_same_layer_twice_in_one_dict_is_an_error(mlp, mlp_data):
    pruner = Pruner(mlp, mlp_data)
    with pytest.raises(ValueError, match="layer '0' is given twice"):
        pruner.prune({"0": 0.5, pruner.layer("0"): 0.9})
    assert pruner.sparsity()["0"] == 0.0


def test_global_two_of_four_names_the_layers_it_leaves_dense_with_their_row_length(image_data):
    pruner = Pruner(make_bn_cnn(), image_data)
    with pytest.warns(UserWarning, match=r"2:4 left 2 of 4 layers dense: 0: its rows are 9 weights long.*10: its rows are 10 weights long"):
        pruner.prune(0.5, granularity="2:4")
    assert pruner.sparsity()["0"] == 0.0 and pruner.sparsity()["3"] == 0.5


def test_seed_must_be_a_whole_number(mlp, mlp_data):
    with pytest.raises(ValueError, match="seed must be a whole number, got 0.5"):
        Pruner(mlp, mlp_data, seed=0.5)


def test_a_refused_construction_holds_nothing(mlp_data):
    model = make_mlp()
    with pytest.raises(ValueError):
        Pruner(model, mlp_data, eval_samples=0)
    Pruner(model, mlp_data)
