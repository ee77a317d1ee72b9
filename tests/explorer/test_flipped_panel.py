"""What pruning breaks: the flipped samples of pruner.flipped(), drawn as images with their
attributions before and after (computed in the background), a table for other data, and a bar
per class."""

import pytest

from prunelab.explorer.background import Scheduler
from prunelab.explorer.panels.flipped import SHOWN, FlippedPanel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_images_with_attributions_before_and_after_and_class_bars(cnn_demo_pruner):
    scheduler = Scheduler()
    panel = FlippedPanel(cnn_demo_pruner, scheduler=scheduler, class_names=[str(d) for d in range(10)])
    cnn_demo_pruner.prune(0.9)
    table = panel.compute()
    expected = cnn_demo_pruner.flipped()
    assert table.column("index") == expected.column("index") and len(table) > SHOWN
    assert f"{len(table)} of 360" in panel.note.value
    assert panel.samples.value.count("<svg") == SHOWN  # the inputs; attributions follow
    scheduler.wait()
    attr = panel.attributions
    assert attr["samples"] == table.column("index")[:SHOWN]
    assert attr["before"].shape == attr["after"].shape == (SHOWN, 1, 8, 8)
    assert panel.samples.value.count("<svg") == 3 * SHOWN  # input, before, after
    first = table[0]
    assert f"#{first['index']} label <b>{first['label']}</b>" in panel.samples.value
    by_class = cnn_demo_pruner.flipped(by_class=True)
    top = by_class[0]
    assert f"{top['flipped']} of {top['samples']}" in panel.classes.value
    assert panel.stale.value == ""
    cnn_demo_pruner.prune(0.5)
    assert "changed since" in panel.stale.value


def test_tabular_data_gets_a_table_and_dense_gets_nothing(mlp_demo_pruner):
    scheduler = Scheduler()
    panel = FlippedPanel(mlp_demo_pruner, scheduler=scheduler)  # no image shape: 64 features
    assert len(panel.compute()) == 0 and panel.samples.value == ""
    mlp_demo_pruner.prune(0.95)
    table = panel.compute()
    scheduler.wait()
    assert len(table) > 0 and "<table" in panel.samples.value and "<svg" not in panel.samples.value
    assert "confidence" in panel.samples.value
