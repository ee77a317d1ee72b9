"""Recipes: recorded as JSON, replayed on a fresh model to exactly the same masks."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import prunelab as pl


def fresh(demo: str = "digits-mlp"):
    d = pl.demos.load(demo)
    return d


def same_masks(a: pl.Pruner, b: pl.Pruner) -> bool:
    ma, mb = a.masks(), b.masks()
    return set(ma) == set(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)


def replay(pruner: pl.Pruner, demo: str, tmp_path=None, **kwargs) -> pl.Pruner:
    """Record ``pruner`` (through a JSON file when tmp_path is given) and replay it on a fresh demo."""
    if tmp_path is not None:
        recipe = pruner.export(tmp_path / "recipe.json", "recipe").path
    else:
        recipe = json.loads(json.dumps(pl.record_recipe(pruner)))  # what a JSON round trip keeps
    d = fresh(demo)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mask mismatch warns: make it fail here
        return pl.apply_recipe(d.model, recipe, d.val, train_data=d.train, **kwargs)


CASES = {
    "magnitude global": lambda p: p.prune(0.8),
    "magnitude per layer": lambda p: p.prune({"0": 0.9, "2": 0.5}),
    "random with seed": lambda p: p.prune(0.7, criterion="random"),
    "structured": lambda p: p.prune(0.5, granularity="structured"),
    "structured per layer": lambda p: p.prune(0.3, granularity="structured", scope="layer"),
    "2:4": lambda p: p.prune(0.5, granularity="2:4"),
    "threshold": lambda p: p.prune(threshold=0.05),
    "structured threshold": lambda p: p.prune(threshold=0.07, granularity="structured"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_replay_gives_the_same_masks(case, tmp_path):
    d = fresh()
    pruner = pl.Pruner(d.model, d.val, train_data=d.train, seed=7)
    CASES[case](pruner)
    assert pruner.masks(), "the case should prune something"
    again = replay(pruner, "digits-mlp", tmp_path)
    assert same_masks(pruner, again)
    assert again.seed == 7
    assert torch.equal(again.outputs(), pruner.outputs())


def test_a_schedule_with_undo_reset_and_mixed_granularities_replays_step_by_step():
    d = fresh("digits-cnn")
    pruner = pl.Pruner(d.model, d.val, train_data=d.train)
    pruner.prune(0.3)
    pruner.prune(0.6)
    pruner.undo()  # undone steps are not part of the recipe
    pruner.prune(0.5, granularity="structured")
    pruner.prune({"8": 0.9})  # replaces layer 8's structured plan
    pruner.prune({"10": 0.5}, granularity="2:4")
    recipe = pl.record_recipe(pruner)
    assert [s["kind"] for s in recipe["steps"]] == ["prune"] * 4
    assert recipe["steps"][0]["amount"] and recipe["layers"]["8"]["granularity"] == "unstructured"
    assert recipe["layers"]["3"]["criterion"] == "magnitude" and 0 < recipe["layers"]["3"]["sparsity"] < 1
    assert same_masks(pruner, replay(pruner, "digits-cnn"))
    pruner.reset()
    pruner.prune(0.2, scope="layer")
    recipe = pl.record_recipe(pruner)
    assert [s["kind"] for s in recipe["steps"]][-2:] == ["reset", "prune"]
    assert same_masks(pruner, replay(pruner, "digits-cnn"))


def test_taylor_replays_with_the_same_data():
    d = fresh()
    pruner = pl.Pruner(d.model, d.val, train_data=d.train)
    pruner.prune(0.8, criterion="taylor")
    assert same_masks(pruner, replay(pruner, "digits-mlp"))


def test_other_weights_get_their_own_masks_with_a_warning():
    d = fresh()
    pruner = pl.Pruner(d.model, d.val)
    pruner.prune(0.8)
    recipe = pl.record_recipe(pruner)
    other = fresh()
    with torch.no_grad():
        other.model[0].weight.mul_(torch.rand_like(other.model[0].weight))
    with pytest.warns(UserWarning, match=r"differ from the recorded ones in \['0.weight'\].*weights differ"):
        again = pl.apply_recipe(other.model, recipe, other.val)
    assert again.sparsity()["0"] > 0.5


def test_recipes_refuse_what_they_cannot_replay(tmp_path):
    d = fresh()
    pruner = pl.Pruner(d.model, d.val)
    pruner.prune(0.5)
    recipe = pl.record_recipe(pruner)
    unknown = dict(recipe, steps=[{"kind": "distill", "epochs": 3}])
    with pytest.raises(ValueError, match="kind 'distill'.*known kinds"):
        pl.apply_recipe(fresh().model, unknown, d.val)
    custom = dict(recipe, steps=[dict(recipe["steps"][0], criterion="my-score")])
    with pytest.raises(ValueError, match="criterion 'my-score'.*criteria="):
        pl.apply_recipe(fresh().model, custom, d.val)
    with pytest.raises(ValueError, match="does not match the recipe's Sequential"):
        cnn = pl.demos.load("digits-cnn")
        pl.apply_recipe(cnn.model, recipe, cnn.val)
    with pytest.raises(ValueError, match="not a prunelab recipe"):
        pl.apply_recipe(fresh().model, {"steps": []}, d.val)


def test_custom_criteria_and_new_step_kinds_can_be_supplied(monkeypatch):
    import prunelab.recipe

    monkeypatch.setattr(prunelab.recipe, "_REPLAYERS", dict(prunelab.recipe._REPLAYERS))  # no leak to others
    d = fresh()
    pruner = pl.Pruner(d.model, d.val)
    pruner.prune(0.6, criterion=pl.Random())
    recipe = pl.record_recipe(pruner)
    recipe["steps"].append({"kind": "note", "text": "checked by hand"})
    seen = []
    pl.register_step("note", lambda p, step, context: seen.append(step["text"]))
    again = pl.apply_recipe(fresh().model, recipe, d.val, criteria={"random": pl.Random()})
    assert seen == ["checked by hand"] and same_masks(pruner, again)


def test_fine_tuned_weights_are_recorded_as_a_step_that_cannot_be_replayed_yet():
    d = fresh()
    pruner = pl.Pruner(d.model, d.val)
    pruner.prune(0.5)
    pruner.set_weights({"4.bias": torch.zeros(10)})
    recipe = pl.record_recipe(pruner)
    assert [s["kind"] for s in recipe["steps"]] == ["prune", "set_weights"]
    with pytest.warns(UserWarning, match="fine-tuning that were not recorded"):
        pl.apply_recipe(fresh().model, recipe, d.val, check=False)


def test_load_recipe_reads_back_exactly_what_was_recorded(tmp_path):
    d = fresh()
    pruner = pl.Pruner(d.model, d.val, train_data=d.train)
    pruner.prune({"0": 0.9, "2": 0.5}).prune(threshold={"4": 0.05})
    path = pruner.export(tmp_path / "recipe.json", "recipe").path
    loaded = pl.load_recipe(path)
    assert loaded == json.loads(json.dumps(pl.record_recipe(pruner)))  # all of it, through JSON
    assert loaded["format"] == "prunelab.recipe" and loaded["version"] == 1
    assert [s["kind"] for s in loaded["steps"]] == ["prune", "prune"]
    assert loaded["steps"][0]["amount"] == {"0": 0.9, "2": 0.5} and loaded["steps"][1]["threshold"] == {"4": 0.05}
    assert {n: v["sparsity"] for n, v in loaded["layers"].items()} == pytest.approx(pruner.sparsity())
    again = fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replayed = pl.apply_recipe(again.model, loaded, again.val, train_data=again.train)
    assert same_masks(replayed, pruner)


def test_recording_walks_the_public_history(tmp_path):
    d = fresh()
    pruner = pl.Pruner(d.model, d.val)
    pruner.prune(0.5).prune(0.9)
    pruner.undo()  # an undone step is not part of the recipe
    history = pruner.history
    assert (len(history), history.cursor, len(history.steps)) == (3, 1, 2) and history.steps[0] is history.original
    assert [s["kind"] for s in pl.record_recipe(pruner)["steps"]] == ["prune"]
    pruner.reset()
    assert pruner.history.steps[-1] is pruner.history.original
    assert [s["kind"] for s in pl.record_recipe(pruner)["steps"]] == ["prune", "reset"]
