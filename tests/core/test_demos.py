"""Built-in demos: trained models on scikit-learn's bundled digits, fresh on every load."""

import pytest
import torch

from prunelab import Pruner, demos


@pytest.fixture(scope="module")
def loaded():
    return {name: demos.load(name) for name in demos.NAMES}


def test_the_two_demos_exist():
    assert demos.NAMES == ("digits-mlp", "digits-cnn")


@pytest.mark.parametrize("name", demos.NAMES)
def test_demo_reaches_97_percent_on_its_validation_split(loaded, name):
    d = loaded[name]
    m = Pruner(d.model, d.val).evaluate()
    assert m.accuracy >= 0.97 and m.samples == len(d.val) == 360
    assert m.accuracy == pytest.approx(demos.accuracy(d.model, d.val))


def test_mlp_demo_has_the_lenet_300_100_shape(loaded):
    pruner = Pruner(loaded["digits-mlp"].model, loaded["digits-mlp"].val)
    assert [(l.name, l.shape) for l in pruner.layers] == [("0", (300, 64)), ("2", (100, 300)), ("4", (10, 100))]


@pytest.mark.parametrize("name, shape", [("digits-mlp", (64,)), ("digits-cnn", (1, 8, 8))])
def test_demo_data_is_the_fixed_stratified_digits_split(loaded, name, shape):
    d = loaded[name]
    x, y = d.val.tensors
    assert x.shape[1:] == shape and x.dtype == torch.float32 and y.dtype == torch.long
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert len(d.train) == 1437 and d.image_shape == (8, 8) and d.classes == [str(i) for i in range(10)]
    counts = torch.bincount(y, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified: 36 +- 1 per class


def test_every_load_is_identical():
    a, b = demos.load("digits-cnn"), demos.load("digits-cnn")
    for (k, v), (k2, v2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert all(torch.equal(s, t) for s, t in zip(a.val.tensors + a.train.tensors, b.val.tensors + b.train.tensors))


def test_every_load_is_a_fresh_independent_model():
    a, b = demos.load("digits-mlp"), demos.load("digits-mlp")
    assert a.model is not b.model
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(a.model.parameters(), b.model.parameters()))
    Pruner(a.model, a.val).prune(0.9)
    a.val.tensors[0].zero_()
    assert int((b.model[0].weight == 0).sum()) == 0
    assert float(b.val.tensors[0].abs().sum()) > 0
    assert demos.accuracy(b.model, b.val) >= 0.97


def test_demo_models_are_ready_for_inference(loaded):
    assert all(not d.model.training for d in loaded.values())
    assert "digits-mlp" in repr(loaded["digits-mlp"]) and "1437 train / 360 validation" in repr(loaded["digits-mlp"])


def test_unknown_demo_suggests_the_close_name():
    with pytest.raises(ValueError, match=r"unknown demo 'digits-mpl'. Did you mean 'digits-mlp'\?"):
        demos.load("digits-mpl")


def test_pruning_the_mlp_demo_by_half_keeps_it_accurate(loaded):
    d = demos.load("digits-mlp")
    pruner = Pruner(d.model, d.val, train_data=d.train)
    pruner.prune(0.5)
    assert pruner.evaluate().accuracy >= 0.95
    pruner.prune(0.99)
    assert pruner.evaluate().accuracy < 0.9  # and pruning hard hurts: the numbers are measured


@pytest.mark.slow
def test_training_is_deterministic():
    a, b = demos.train("digits-mlp", epochs=1), demos.train("digits-mlp", epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.slow
def test_python_m_prunelab_demos_reproduces_the_shipped_weights(tmp_path):
    """`python -m prunelab.demos` run on a copy of the package (it writes beside its own code),
    compared with the shipped files: the split bit for bit; the weights as far as training is
    reproducible across machines (float sums in another order drift a little), which is enough
    for identical predictions."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    package = Path(demos.__file__).parent
    shutil.copytree(package, tmp_path / "prunelab", ignore=shutil.ignore_patterns("demo_weights", "__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "prunelab.demos"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    made = tmp_path / "prunelab" / "demo_weights"
    assert sorted(p.name for p in made.iterdir()) == sorted(p.name for p in demos.WEIGHTS.iterdir())
    split = load_file(made / "digits-split.safetensors")
    shipped_split = load_file(demos.WEIGHTS / "digits-split.safetensors")
    assert split.keys() == shipped_split.keys() and all(torch.equal(split[k], shipped_split[k]) for k in split)
    for name in demos.NAMES:
        shipped, d = demos.load(name), demos.load(name)
        d.model.load_state_dict(load_file(made / f"{name}.safetensors"))
        assert f"{name}: validation accuracy {demos.accuracy(d.model, d.val):.2%}" in done.stdout
        x, _ = d.val.tensors
        with torch.no_grad():
            agree = float((d.model(x).argmax(1) == shipped.model(x).argmax(1)).float().mean())
        assert agree >= 0.99, f"{name}: the regenerated model predicts differently on {1 - agree:.1%} of val"
        assert demos.accuracy(d.model, d.val) == pytest.approx(demos.accuracy(shipped.model, d.val), abs=0.01)
        ours, theirs = d.model.state_dict(), shipped.model.state_dict()
        assert all(torch.equal(ours[k], v) for k, v in theirs.items() if not v.is_floating_point())  # counters
        floats = [k for k, v in theirs.items() if v.is_floating_point()]
        a, b = (torch.cat([sd[k].flatten() for k in floats]) for sd in (ours, theirs))
        # the same weights, up to drift (seen: 4.5% for the CNN, most of it in the biases before
        # BatchNorm, which the normalisation cancels, so nothing holds them in place)
        assert float((a - b).norm() / b.norm()) < 0.1, name
    mlp = load_file(made / "digits-mlp.safetensors")  # the MLP's drift stays tiny everywhere seen
    shipped_mlp = load_file(demos.WEIGHTS / "digits-mlp.safetensors")
    assert all(torch.allclose(mlp[k], v, atol=1e-3) for k, v in shipped_mlp.items())
