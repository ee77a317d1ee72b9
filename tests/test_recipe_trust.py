"""A recipe is checked against its schema before its first step runs, and a replay that still
fails leaves the model exactly as it came; malformed recipes are clear errors, never raw crashes."""

from __future__ import annotations

import copy
import json

import pytest

import prunelab as pl
from core_models import assert_same_state, state_of


@pytest.fixture
def recorded(mlp_demo):
    """A two-step recipe of the MLP demo (global magnitude, then a per-layer threshold)."""
    pruner = pl.Pruner(mlp_demo.model, mlp_demo.val)
    pruner.prune(0.5).prune(threshold={"4": 0.05})
    recipe = json.loads(json.dumps(pl.record_recipe(pruner)))
    pruner.reset()
    return recipe


def with_last_step(recipe, **changes):
    bad = copy.deepcopy(recipe)
    bad["steps"][-1].update(changes)
    return bad


def deep(levels: int):
    value = 0.5
    for _ in range(levels):
        value = {"x": value}
    return value


CASES = {
    "unknown kind in the last step": (lambda r: with_last_step(r, kind="distill"), "step 1 has kind 'distill'"),
    "unknown layer in the last step": (lambda r: with_last_step(r, threshold={"9": 0.05}), "unknown layer '9'"),
    "unknown granularity": (lambda r: with_last_step(r, granularity="channel"), "unknown granularity 'channel'"),
    "amount out of range": (lambda r: with_last_step(r, threshold=None, amount={"0": 1.5}),
                            "exactly one of 'amount'"),
    "amount above 1": (lambda r: {**r, "steps": r["steps"] + [{"kind": "prune", "granularity": "unstructured",
                                                             "amount": {"0": 1.5}}]}, r"fraction in \[0, 1\]"),
    "unknown criterion": (lambda r: with_last_step(r, criterion="my-score"), "criterion 'my-score'.*criteria="),
    "steps a string": (lambda r: {**r, "steps": "prune everything"}, "'steps' must be a list of step objects, not str"),
    "steps holding numbers": (lambda r: {**r, "steps": r["steps"] + [3]}, "step 2 must be a JSON object, not int"),
    "layers a list": (lambda r: {**r, "layers": ["0", "2"]}, "'layers' must be a JSON object, not list"),
    "a layer without a shape": (lambda r: {**r, "layers": {"0": {}}}, "layer '0' needs a 'shape'"),
    "pruner settings a list": (lambda r: {**r, "pruner": [1]}, "'pruner' must be a JSON object"),
    "a newer version": (lambda r: {**r, "version": 99}, "version 99.*Update prunelab"),
    "nested 100,000 levels deep": (lambda r: with_last_step(r, threshold={"4": deep(100_000)}),
                                   "threshold for layer '4' must be a number, not a dict"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_recipe_is_refused_before_its_first_step_and_the_model_is_untouched(recorded, mlp_demo, case):
    make, message = CASES[case]
    before = state_of(mlp_demo.model)
    with pytest.raises(ValueError, match=message):
        pl.apply_recipe(mlp_demo.model, make(recorded), mlp_demo.val)
    assert_same_state(mlp_demo.model, before)


def test_a_recipe_file_nested_100000_levels_deep_is_a_clear_error(tmp_path, mlp_demo):
    for text in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        (tmp_path / "deep.json").write_text(text)
        with pytest.raises(ValueError, match="deep.json is not a prunelab recipe: its JSON is nested too deeply"):
            pl.apply_recipe(mlp_demo.model, tmp_path / "deep.json", mlp_demo.val)


@pytest.mark.parametrize("failure", [RuntimeError("the step failed"), KeyboardInterrupt()])
def test_a_step_that_fails_during_the_replay_leaves_the_model_exactly_as_it_came(recorded, mlp_demo, monkeypatch,
                                                                                 failure):
    import prunelab.recipe

    monkeypatch.setattr(prunelab.recipe, "_REPLAYERS", dict(prunelab.recipe._REPLAYERS))

    def fail(pruner, step, context):
        assert pruner.sparsity()["0"] > 0  # the steps before it did prune the model
        raise failure

    pl.register_step("fails", fail)
    recipe = copy.deepcopy(recorded)
    recipe["steps"].append({"kind": "fails"})
    before = state_of(mlp_demo.model)
    with pytest.raises(type(failure)):
        pl.apply_recipe(mlp_demo.model, recipe, mlp_demo.val)
    assert_same_state(mlp_demo.model, before)


def test_a_good_recipe_still_replays(recorded, mlp_demo):
    pruner = pl.apply_recipe(mlp_demo.model, recorded, mlp_demo.val)
    assert pruner.sparsity()["0"] > 0 and pruner.sparsity()["4"] > 0


def test_check_recipe_names_the_known_layers(recorded):
    with pytest.raises(ValueError, match=r"step 1 cannot be replayed: unknown layer '4x'. Did you mean '4'.*Prunable "
                                         r"layers: \['0', '2', '4'\]. Export"):
        pl.recipe.check_recipe(with_last_step(recorded, threshold={"4x": 0.1}), ["0", "2", "4"])
