"""The Explorer as a whole: opening, following the Pruner from anywhere, background work with a
stale marker, panels in tabs, and clear errors for bad input to pl.explore."""

import re

import pytest
import torch
from torch import nn

import prunelab as pl
from explorer_support import Sent


def test_opens_with_every_view_filled(explorer):
    ex = explorer
    assert isinstance(ex, pl.Explorer)
    assert set(ex.state.scores) == {"magnitude", "taylor", "attribution", "wanda"}
    assert ex.state.explanations is not None and not ex.state.explanations_stale
    assert ex.tabs.titles[0] == "Inspect"
    text = ex.views["metrics"].readout.value
    assert re.search(r"\d\d\.\d%", text) and f"{ex.pruner.evaluate().accuracy:.1%}" in text
    assert "prunelab-metrics" in ex.views["metrics"].readout._dom_classes
    assert ex.state.layer == "2"  # the biggest layer is shown in detail first


def test_changes_from_python_refresh_views_by_patches(explorer):
    ex = explorer
    ex.pruner.reset()
    ex.wait()
    sent = {name: Sent(v.bokeh) for name, v in ex.views.items()}
    ex.pruner.prune(0.9)
    assert f"{ex.pruner.evaluate().accuracy:.1%}" in ex.views["metrics"].readout.value
    assert ex.state.explanations_stale and "stale" in ex.views["interpretability"].caption.value
    for name in ("connectivity", "weights", "importance", "metrics"):
        assert sent[name].events(), f"{name} sent nothing"
        assert not sent[name].rerendered()
    ex.wait()  # the settled change is explained again in the background
    assert not ex.state.explanations_stale
    assert ex.state.explanations.sparsity == pytest.approx(0.9, abs=1e-3)
    assert any(e["kind"] == "ColumnDataChanged" for e in sent["interpretability"].events())
    ex.pruner.reset()
    ex.wait()


def test_new_weights_rebuild_references_and_rescore(explorer):
    ex = explorer
    ex.pruner.reset()
    weights = {n: p.detach() * 0.5 for n, p in ex.pruner.model.named_parameters()}
    ex.pruner.set_weights(weights)
    assert ex.state.reference.version == ex.pruner.weights_version
    assert torch.allclose(ex.state.reference.weights["0"], weights["0.weight"])
    assert set(ex.state.scores) == {"magnitude"}  # taylor, attribution and wanda are recomputed
    ex.wait()
    assert set(ex.state.scores) == {"magnitude", "taylor", "attribution", "wanda"}
    ex.pruner.reset()
    ex.wait()


def test_progress_shows_while_background_work_runs(explorer):
    explorer.explain()
    assert explorer.state.busy == "attributions"
    assert explorer.progress.layout.visibility == "visible"
    explorer.wait()
    assert explorer.state.busy == "" and explorer.progress.layout.visibility == "hidden"


def test_add_panel_adds_a_tab(explorer):
    import ipywidgets as w

    panel = w.Label("hello")
    explorer.add_panel("Mine", panel)
    assert explorer.tabs.children[-1] is panel and explorer.tabs.titles[-1] == "Mine"
    with pytest.raises(TypeError, match="ipywidgets widget"):
        explorer.add_panel("bad", "not a widget")


def test_training_and_export_panels_are_tabs_on_the_same_pruner():
    from prunelab.explorer.panels.export import ExportPanel
    from prunelab.explorer.panels.training import TrainingPanel

    ex = pl.explore("digits-mlp")
    assert ex.tabs.titles == ("Inspect", "Fine-tune", "Export", "Tables", "Recover", "What pruning breaks", "Compare")
    training, export = ex.tabs.children[1:3]
    assert isinstance(training, TrainingPanel) and isinstance(export, ExportPanel)
    assert training.pruner is ex.pruner and export.pruner is ex.pruner
    ex.close()


def test_a_pruner_can_be_explored_and_its_baseline_is_the_original(explorer, mlp_demo_pruner):
    pruner = mlp_demo_pruner
    dense = pruner.evaluate().accuracy
    pruner.prune(0.97)
    ex = pl.explore(pruner)
    assert ex.state.baseline.accuracy == pytest.approx(dense)
    assert ex.state.metrics.accuracy < dense
    assert abs(ex.controls.global_slider.value - 0.97) < 1e-3
    ex.close()
    pruner.prune(0.5)  # a closed explorer no longer follows its Pruner
    assert abs(ex.controls.global_slider.value - 0.97) < 1e-3


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="unknown demo 'digits-mpl'.*Did you mean 'digits-mlp'"):
        pl.explore("digits-mpl")
    with pytest.raises(ValueError, match="needs val_data"):
        pl.explore(nn.Linear(4, 2))
    with pytest.raises(TypeError, match="unknown option 'eval_sample'.*Did you mean 'eval_samples'"):
        pl.explore("digits-mlp", eval_sample=100)
    with pytest.raises(TypeError, match="torch.nn.Module, a demo name"):
        pl.explore(42)
    with pytest.raises(ValueError, match="brings its own data"):
        pl.explore("digits-mlp", val_data=(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long)))
    model = nn.Sequential(nn.Linear(4, 3))
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match="does not fit the model"):
        pl.explore(model, (torch.zeros(5, 7), torch.zeros(5, dtype=torch.long)))
    assert torch.equal(model[0].weight, before)  # the model is left as it was


def test_a_users_model_with_tabular_inputs(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(200, 6)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    ex = pl.explore(model, (x, y), eval_samples=100)
    ex.wait()
    assert ex.state.metrics.samples == 100 and "on 100 validation" in ex.views["metrics"].readout.value
    interp = ex.views["interpretability"]
    assert len(interp.bars_src.data["x"]) == 6 * 6 * 2  # bars, not images, for 6 features
    ex.controls.global_slider.value = 0.5
    assert abs(ex.pruner.overall_sparsity() - 0.5) < 0.01
    ex.close()


def test_explore_passes_its_options_to_the_pruner():
    torch.manual_seed(0)
    x = torch.randn(120, 6)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))

    def hits(out, targets):
        return (out.argmax(1) == targets).float().mean()

    loss = nn.CrossEntropyLoss()
    ex = pl.explore(model, (x, y), metric=hits, loss=loss, eval_samples=100, batch_size=16, seed=3)
    p = ex.pruner
    assert (p.metric, p.loss, p.batch_size, p.seed) == (hits, loss, 16, 3)
    assert ex.state.metrics.samples == 100 and ex.state.metrics.metric_name == "hits"
    assert "hits" in ex.views["metrics"].readout.value
    ex.close()


def test_explain_button_and_auto_explain_toggle(explorer):
    ex = explorer
    interp = ex.views["interpretability"]
    ex.pruner.reset()
    ex.wait()
    interp.auto.value = False  # the checkbox sets the hub's trait
    assert ex.state.auto_explain is False
    ex.pruner.prune(0.8)
    ex.wait()
    assert ex.state.explanations_stale and "press Explain now" in interp.caption.value  # nothing recomputed
    interp.explain.click()
    assert ex.state.busy == "attributions"
    ex.wait()
    assert not ex.state.explanations_stale
    assert ex.state.explanations.sparsity == pytest.approx(ex.pruner.overall_sparsity())
    ex.pruner.prune(0.5)
    ex.wait()
    assert ex.state.explanations_stale
    interp.auto.value = True  # turning it back on explains the current state once changes settle
    ex.wait()
    assert not ex.state.explanations_stale
    assert ex.state.explanations.sparsity == pytest.approx(ex.pruner.overall_sparsity())
    ex.state.auto_explain = False  # and the checkbox shows the hub's value
    assert interp.auto.value is False
    ex.state.auto_explain = True
    ex.pruner.reset()
    ex.wait()


def test_apply_takes_typed_actions(explorer):
    from prunelab.explorer.actions import Action

    with pytest.raises(TypeError, match="Action"):
        explorer.apply(lambda: None)
    explorer.apply(Action(kind="layer", layer="2", run=lambda: explorer.pruner.prune({"2": 0.5})))
    assert explorer.pruner.sparsity()["2"] == pytest.approx(0.5)
    assert explorer.controls.layer_sliders["2"].value == pytest.approx(0.5) and explorer.state.action is None
    explorer.pruner.reset()
    explorer.wait()
