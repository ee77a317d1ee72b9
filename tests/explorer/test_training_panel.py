"""The retraining panel: background runs applied on the main thread, progress, cancel, history,
sensitivity curves with stable layer colours, allocation. Widgets run without a kernel here."""

import asyncio
import threading

import pytest
import torch

import prunelab as pl
from prunelab import retrain
from prunelab.explorer.panels.sensitivity import layer_colours
from prunelab.explorer.panels.training import TrainingPanel
from prunelab.retrain import OPTIMIZERS, FinetuneSettings, IterateSettings
from prunelab.retrain.loop import Batches


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def small_iteration(panel, target=0.9, steps=2):
    panel.target.value = target
    panel.steps.value, panel.epochs_per_step.value, panel.final_epochs.value = steps, 1, 0


def run_in_loop(scenario, timeout=60):
    """Run ``scenario`` inside an asyncio loop, as widget callbacks run inside a kernel's loop."""
    async def main():
        return await asyncio.wait_for(scenario(), timeout)
    return asyncio.run(main())


async def until_idle(panel):
    while panel.busy:
        await asyncio.sleep(0.02)


def widgets_in(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from widgets_in(child)


def test_panel_starts_idle_with_the_settings_defaults(mlp_demo_pruner):
    panel = TrainingPanel(mlp_demo_pruner)
    assert (panel.epochs.value, panel.lr.value, panel.optimizer.value) == (
        FinetuneSettings.epochs, FinetuneSettings.lr, FinetuneSettings.optimizer)
    assert list(panel.optimizer.options) == list(OPTIMIZERS)
    assert (panel.steps.value, panel.epochs_per_step.value, panel.final_epochs.value, panel.schedule.value,
            panel.regrow.value) == (IterateSettings.steps, IterateSettings.epochs_per_step,
                                    IterateSettings.final_epochs, IterateSettings.schedule, IterateSettings.regrow)
    assert not panel.busy and panel.progress.value == 0 and panel.status.value == ""
    assert panel.cancel_button.disabled and not panel.finetune_button.disabled and not panel.iterate_button.disabled
    assert panel.sensitivity.allocate_button.disabled  # nothing to allocate from yet
    assert panel.sensitivity_table is None and panel.sensitivity_marks == {}


def test_stable_css_classes_name_each_control_once(mlp_demo_pruner):
    panel = TrainingPanel(mlp_demo_pruner)
    expected = {"prunelab-training-finetune": panel.finetune_button, "prunelab-training-iterate": panel.iterate_button,
                "prunelab-training-cancel": panel.cancel_button, "prunelab-training-progress": panel.progress,
                "prunelab-training-status": panel.status,
                "prunelab-training-allocate": panel.sensitivity.allocate_button}
    assert "prunelab-training" in panel._dom_classes
    inside = list(widgets_in(panel))
    for css, widget in expected.items():
        carriers = [w for w in inside if css in getattr(w, "_dom_classes", ())]
        assert carriers == [widget], css  # in the panel, on that control only


def test_finetune_runs_in_a_thread_and_applies_on_the_main_thread(mlp_demo_pruner):
    mlp_demo_pruner.prune(0.9)
    before = mlp_demo_pruner.evaluate().accuracy
    params = {n: id(p) for n, p in mlp_demo_pruner.model.named_parameters()}
    applied_on = []
    mlp_demo_pruner.on_change(lambda: applied_on.append(threading.current_thread()))
    panel = TrainingPanel(mlp_demo_pruner)
    panel.epochs.value = 2

    async def scenario():
        panel.finetune_button.click()
        assert panel.busy and panel.cancel_button.disabled is False and panel.finetune_button.disabled
        # the kernel stays responsive: evaluating the pruner's own model meanwhile is safe
        while panel.busy:
            assert mlp_demo_pruner.evaluate().accuracy == before
            await asyncio.sleep(0.02)

    run_in_loop(scenario)
    assert applied_on == [threading.main_thread()]
    assert mlp_demo_pruner.evaluate().accuracy > before
    assert {n: id(p) for n, p in mlp_demo_pruner.model.named_parameters()} == params
    batches = len(Batches(mlp_demo_pruner.train_data, FinetuneSettings.batch_size, mlp_demo_pruner.device))
    assert panel.progress.value == panel.progress.max == 2 * batches  # 2 epochs
    assert "fine-tuned 2 epochs" in panel.status.value
    assert panel.cancel_button.disabled and not panel.finetune_button.disabled
    # the same job as the Python API: the same weights, bit for bit, as retrain.finetune here
    d = pl.demos.load("digits-mlp")
    twin = pl.Pruner(d.model, d.val, train_data=d.train)
    twin.prune(0.9)
    retrain.finetune(twin, 2, progress=False)
    assert all(torch.equal(p.view(torch.int32), q.view(torch.int32))
               for p, q in zip(mlp_demo_pruner.model.parameters(), twin.model.parameters()))
    assert mlp_demo_pruner.undo() and mlp_demo_pruner.evaluate().accuracy == before


def test_iterate_streams_steps_into_the_pruner_table_and_curve(mlp_demo_pruner):
    panel = TrainingPanel(mlp_demo_pruner)
    small_iteration(panel, 0.9, steps=3)
    seen = []
    mlp_demo_pruner.on_change(lambda: seen.append(round(mlp_demo_pruner.overall_sparsity(), 4)))

    async def scenario():
        panel.iterate_button.click()
        await until_idle(panel)

    run_in_loop(scenario)
    assert seen == pytest.approx(pl.sparsity_schedule(0, 0.9, 3), abs=1e-4), panel.status.value  # one change per step
    assert [r["step"] for r in panel.history] == [0, 1, 2, 3]
    assert panel.history[-1]["accuracy_after"] == mlp_demo_pruner.evaluate().accuracy
    assert panel.history_html.value.count("<tr>") == 1 + 4
    assert panel.history_source.data["after"] == panel.history.column("accuracy_after")
    assert "reached 90.0% sparsity" in panel.status.value
    # the Tables tab's "iterations" report shows this run, measured as the panel showed it
    table = mlp_demo_pruner.report("iterations")
    assert table.column("step") == [0, 1, 2, 3]
    assert table.column("accuracy_after") == panel.history.column("accuracy_after")


def test_cancel_stops_at_the_last_completed_step(mlp_demo_pruner):
    panel = TrainingPanel(mlp_demo_pruner)
    small_iteration(panel, 0.9, steps=3)
    panel.epochs_per_step.value = 3
    steps_applied = []
    mlp_demo_pruner.on_change(lambda: steps_applied.append(mlp_demo_pruner.overall_sparsity()))

    async def scenario():
        panel.iterate_button.click()
        while not steps_applied:
            await asyncio.sleep(0.01)
        panel.cancel_button.click()
        await until_idle(panel)

    run_in_loop(scenario)
    assert "cancelled" in panel.status.value
    assert len(steps_applied) < 3
    assert mlp_demo_pruner.overall_sparsity() == pytest.approx(steps_applied[-1])
    assert panel.cancel_button.disabled
    assert not panel.iterate_button.disabled


def test_a_failing_run_reports_its_error_and_frees_the_panel(mlp_demo_pruner):
    panel = TrainingPanel(mlp_demo_pruner)
    mlp_demo_pruner.loss = lambda out, y: (out * float("nan")).sum()  # a loss that becomes NaN
    panel.epochs.value = 1
    panel.finetune_button.click()
    assert panel.wait(30)
    assert isinstance(panel.last_error, FloatingPointError)
    assert "failed" in panel.status.value and not panel.busy
    assert not mlp_demo_pruner.can_undo


def test_without_train_data_training_is_disabled_with_the_reason(mlp_demo):
    panel = TrainingPanel(pl.Pruner(mlp_demo.model, mlp_demo.val))
    assert panel.finetune_button.disabled and panel.iterate_button.disabled
    assert "train_data" in panel.finetune_button.tooltip
    assert not panel.sensitivity.button.disabled  # sensitivity needs validation data only


def test_sensitivity_curves_keep_each_layer_colour_and_allocate_applies(mlp_demo_pruner):
    panel = TrainingPanel(mlp_demo_pruner)
    panel.sensitivity.sparsities.value = "0.5, 0.8, 0.9, 0.95"
    panel.sensitivity.button.click()
    assert panel.wait(60)
    table = panel.sensitivity_table
    assert table is mlp_demo_pruner.sensitivity([0.5, 0.8, 0.9, 0.95])  # stored in the pruner's cache
    colours = layer_colours(mlp_demo_pruner.layer_names)
    fig = panel.sensitivity.plot._model  # the bokeh figure inside the widget
    lines = [r for r in fig.renderers if type(r.glyph).__name__ == "Line"]
    by_layer = {name: src for name, src in panel.sensitivity.sources.items()}
    for r in lines:
        layer = next(n for n, s in by_layer.items() if s is r.data_source)
        assert r.glyph.line_color == colours[layer]
    assert by_layer["0"].data["sparsity"] == [0.0, 0.5, 0.8, 0.9, 0.95]
    assert by_layer["0"].data["accuracy"][0] == table.baseline
    assert set(panel.sensitivity_marks) == {"0", "2", "4"}
    assert all(m["colour"] == colours[n] for n, m in panel.sensitivity_marks.items())
    assert "within 1 pt" in panel.sensitivity.marks.value
    assert not panel.sensitivity.allocate_button.disabled

    panel.sensitivity.allocate_mode.value = "target"
    panel.sensitivity.allocate_value.value = 0.8
    panel.sensitivity.allocate_button.click()
    assert mlp_demo_pruner.overall_sparsity() == pytest.approx(0.8, abs=1e-3)
    assert "measured jointly" in panel.status.value and "<table>" in panel.sensitivity.allocation_html.value


def test_structured_sensitivity_draws_only_layers_with_units(mlp_demo_pruner):
    panel = TrainingPanel(mlp_demo_pruner)
    panel.granularity.value = "structured"
    panel.sensitivity.sparsities.value = "0.25, 0.5"
    panel.sensitivity.button.click()
    assert panel.wait(60)
    assert panel.sensitivity.sources["4"].data["sparsity"] == []
    assert panel.sensitivity.sources["2"].data["sparsity"] == [0.0, 0.25, 0.5]


def test_layer_colours_are_fixed_by_position():
    assert layer_colours(["a", "b"]) == {"a": "#1f77b4", "b": "#ff7f0e"}
    many = layer_colours([str(i) for i in range(30)])
    assert len(set(many.values())) == 30


def test_bad_sparsities_text_is_explained(mlp_demo_pruner):
    panel = TrainingPanel(mlp_demo_pruner)
    panel.sensitivity.sparsities.value = "0.5, lots"
    panel.sensitivity.button.click()
    assert not panel.busy and "fractions separated by commas" in panel.status.value


def test_in_an_explorer_the_panel_shares_its_hub_and_the_views_follow_a_finetune(one_thread):
    ex = pl.explore("digits-mlp")
    try:
        panel = ex.panels["Fine-tune"]
        assert panel.state is ex.state  # one hub: the panel makes none of its own
        ex.pruner.prune(0.9)
        ex.wait()
        revision, before = ex.state.revision, ex.state.metrics.accuracy
        panel.sensitivity.sparsities.value = "0.5"
        panel.sensitivity.button.click()
        assert panel.wait(60) and panel.sensitivity_table is not None
        assert "analyse again" not in panel.sensitivity.marks.value
        panel.epochs.value = 1
        panel.finetune_button.click()
        assert panel.wait(60) and "fine-tuned 1 epochs" in panel.status.value
        ex.wait()
        assert ex.state.revision > revision  # the hub measured the fine-tune once it was applied
        assert ex.state.metrics.accuracy == ex.pruner.evaluate().accuracy != before
        assert ex.state.reference.version == ex.pruner.weights_version
        assert "analyse again" in panel.sensitivity.marks.value  # curves of the old weights: stale
    finally:
        ex.close()
