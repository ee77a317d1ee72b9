"""Weight magnitudes view: |w| histogram with the live threshold, heatmap of the dense weights
with a veil on the pruned ones; both follow the selected layer and send only changed columns."""

import numpy as np

from prunelab.explorer.state import measure
from prunelab.explorer.views.weights import VEIL_LEVELS, WeightsView, block_factors, block_reduce, pruned_share

from explorer_support import Sent, make_state


def test_histogram_counts_kept_weights_and_draws_the_threshold(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner, layer="2")
    view = WeightsView(mlp_demo_pruner, state)
    data = view.hist_src.data
    assert sum(data["total"]) == 30000 and sum(data["kept"]) == 30000
    assert not view.threshold.visible
    sent = Sent(view.bokeh)
    mlp_demo_pruner.prune({"2": 0.7})
    measure(mlp_demo_pruner, state)
    assert sum(view.hist_src.data["kept"]) == 9000
    assert view.threshold.visible
    dense = state.reference.abs_flat("2")
    assert abs(view.threshold.location - np.sort(dense)[21000 - 1]) < 1e-7  # largest pruned |w|
    assert sent.columns(view.hist_src) == {"kept"}
    assert sent.columns(view.heat_src) == set()  # the dense magnitudes stay where they are
    assert sent.columns(view.veil_src) == {"image"}  # one byte a cell
    assert not sent.full_data_sends(view.hist_src) and not sent.rerendered()
    image, veil = view.heat_src.data["image"][0], view.veil_src.data["image"][0]
    assert image.shape == veil.shape == (100, 300) and not np.isnan(image).any()
    assert veil.dtype == np.uint8 and (veil == VEIL_LEVELS - 1).mean() == 0.7 and (veil == 0).mean() == 0.3
    pruned = ~mlp_demo_pruner.mask("2").numpy()
    assert (veil[pruned] == VEIL_LEVELS - 1).all()  # the veil lies on exactly the pruned weights
    assert "70.0% pruned" in view.caption.value and "|w| &lt;" in view.caption.value
    mlp_demo_pruner.reset()


def test_no_threshold_line_when_pruning_is_not_by_magnitude(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner, layer="2")
    view = WeightsView(mlp_demo_pruner, state)
    mlp_demo_pruner.prune({"2": 0.5}, criterion="random")
    measure(mlp_demo_pruner, state)
    assert not view.threshold.visible
    assert "no single |w| threshold" in view.caption.value
    mlp_demo_pruner.reset()


def test_selecting_a_layer_switches_the_view(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner, layer="2")
    view = WeightsView(mlp_demo_pruner, state)
    state.layer = "0"
    assert sum(view.hist_src.data["total"]) == 19200
    assert view.heat_src.data["image"][0].shape == (300, 64)
    assert "layer <b>0</b>" in view.caption.value


def test_convolutions_show_kernel_norms(cnn_demo_pruner):
    state = make_state(cnn_demo_pruner, layer="3")
    view = WeightsView(cnn_demo_pruner, state)
    image = view.heat_src.data["image"][0]
    w = cnn_demo_pruner.layer("3").module.weight.detach()
    assert image.shape == (32, 16)
    assert abs(image[4, 7] - w[4, 7].norm().item()) < 1e-5
    assert "kernel norms" in view.caption.value


def test_big_matrices_are_shown_as_blocks():
    assert block_factors(100, 300) == (1, 1)
    fr, fc = block_factors(4096, 4096)
    assert -(-4096 // fr) * -(-4096 // fc) <= 65536
    m = np.zeros((1024, 8))
    m[0, 0], m[1, 0] = 3.0, 4.0
    img, block = block_reduce(m)
    assert block == (2, 1) and img.shape == (512, 8)
    assert abs(img[0, 0] - np.sqrt((9 + 16) / 2)) < 1e-6  # RMS of the block's nonzero weights
    assert np.isnan(img[1, 0])  # a block with every weight pruned is masked


def test_the_veil_of_a_convolution_or_a_block_says_the_share_pruned():
    import torch
    mask = torch.ones(2, 2, 3, 3, dtype=torch.bool)
    mask[0, 1, 0, :2] = False  # 2 of the 9 weights of one kernel
    mask[1, 0] = False  # a whole kernel
    veil = pruned_share(mask, (1, 1))
    assert veil.tolist() == [[0, 2], [VEIL_LEVELS - 1, 0]]  # ceil(2/9 * 7) = 2: any pruned weight shows
    blocks = pruned_share(torch.tensor([[True, False], [True, True], [False, False]]), (2, 2))
    assert blocks.tolist() == [[2], [VEIL_LEVELS - 1]]  # 1 of 4, then the short last block: 2 of 2
