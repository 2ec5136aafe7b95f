"""Each recipe end to end on its fixture through the command (tiny encoders, the CPU, an epoch or two), resume from
a checkpoint against an uninterrupted run, and the arguments refused before any training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mimo_ext.balance.recipes import RECIPES, RunConfig, run_recipe
from mimo_ext.balance.recipes.__main__ import main
from mimo_ext.balance.recipes.fixtures import make_ave, make_avmnist, make_cremad, make_ks

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors

CASES = {
    "cremad": (lambda root: make_cremad(root, 2, 1), ["joint", "ogm_ge", "mimo"], ["--option", "image_size=32"]),
    "ks": (lambda root: make_ks(root, 1, 1), ["uniform", "mimo_fused"], ["--option", "image_size=32"]),
    "ave": (lambda root: make_ave(root, 1, 1), ["mmpareto", "mimo"], ["--option", "image_size=32"]),
    "avmnist": (lambda root: make_avmnist(root, 30, 10), ["joint", "mgda", "mimo"], []),
}


@pytest.mark.parametrize("name", list(CASES))
def test_recipe_runs_end_to_end_on_its_fixture(tmp_path, capsys, name):
    make, methods, extra = CASES[name]
    root = make(tmp_path / "data")
    out = tmp_path / "out"
    argv = [name, "--root", str(root), "--tiny", "--device", "cpu", "--workers", "0", "--epochs", "2",
            "--batch-size", "8", "--methods", *methods, "--out", str(out), *extra]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    recipe = RECIPES[name]
    assert printed.count("\n") > 5 and all(f"\n{m} " in printed for m in methods)
    assert f"MIMO (arXiv 2511.06686) reports {recipe.paper.value:.2f}" in printed
    report = json.loads((out / f"recipe_{name}.json").read_text())
    (results,) = [d["results"] for d in report["datasets"].values()]
    for m in methods:
        r = results[m]
        assert 0.0 <= r["fused_acc"] <= 1.0 and len(r["curves"]["fused"]) == 2
        assert len(r["head_acc"]) == len(r["masked_acc"]) == 2 and r["step_time_s"] > 0
        assert r["settings"]["train_rows"] == len(recipe.load(root, dict(recipe.options, image_size=8))[0])
    assert (out / "checkpoints" / f"{name}_{methods[0]}_seed0.pt").is_file()


def _config(root, out, epochs=2, **kw):
    return RunConfig.from_recipe(RECIPES["avmnist"], root, ["mimo"], [0], epochs=epochs, batch_size=8, tiny=True,
                                 out=out, **kw)


@pytest.mark.parametrize("method_options", [{}, {"mimo": {"schedule": "increasing"}}], ids=["constant", "schedule"])
def test_resume_continues_where_the_interrupted_run_stopped(tmp_path, method_options):
    """Also with a penalty schedule, whose step count the resumed run must take up where it stopped."""
    root = make_avmnist(tmp_path / "data", 30, 10)
    kw = dict(method_options=method_options)
    whole = run_recipe(_config(root, tmp_path / "whole", epochs=3, **kw))["mimo"]

    class Stop(Exception):
        pass

    def stop_after_first_epoch(message):
        if "epoch 1/3" in message:
            raise Stop

    with pytest.raises(Stop):
        run_recipe(_config(root, tmp_path / "cut", epochs=3, **kw), stop_after_first_epoch)
    epochs_seen = []
    resumed = run_recipe(_config(root, tmp_path / "cut", epochs=3, resume=True, **kw), epochs_seen.append)["mimo"]
    assert [m.split(":")[0] for m in epochs_seen] == ["mimo seed 0 epoch 2/3", "mimo seed 0 epoch 3/3"]
    assert resumed["curves"]["fused"] == whole["curves"]["fused"]
    assert resumed["head_acc"] == whole["head_acc"] and resumed["masked_acc"] == whole["masked_acc"]
    state = torch.load(tmp_path / "cut" / "checkpoints" / "avmnist_mimo_seed0.pt", weights_only=True)
    reference = torch.load(tmp_path / "whole" / "checkpoints" / "avmnist_mimo_seed0.pt", weights_only=True)
    for key, value in reference["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=0)


def test_runs_split_over_processes_assemble_into_one_table_without_training_again(tmp_path):
    """docs/benchmarks.md's several-GPU recipe: each process trains its own methods into the same --out, then one
    --resume call over them all trains nothing and reports what each process found."""
    root = make_avmnist(tmp_path / "data", 30, 10)
    out = tmp_path / "out"
    config = RunConfig.from_recipe(RECIPES["avmnist"], root, ["joint"], [0], epochs=1, batch_size=8, tiny=True, out=out)
    alone = {m: run_recipe(dataclasses.replace(config, methods=[m]))[m] for m in ("joint", "mimo")}
    trained = []
    together = run_recipe(dataclasses.replace(config, methods=["joint", "mimo"], resume=True), trained.append)
    assert not [m for m in trained if "epoch" in m]
    for m, result in alone.items():
        assert together[m]["curves"] == result["curves"] and together[m]["head_acc"] == result["head_acc"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(fusion="film", methods=["ogm_ge"]), r"ogm_ge splits the fused logits .* fusion='film' has none"),
        (dict(methods=["nope"]), r"unknown method\(s\) \['nope'\]"),
        (dict(options={"fps": 2}), r"unknown option\(s\) \['fps'\] for avmnist"),
        (dict(seeds=[1, 1]), r"duplicate seed\(s\) \[1\]"),
    ],
)
def test_bad_arguments_are_refused_before_the_data_is_read(tmp_path, overrides, message):
    methods = overrides.pop("methods", ["joint"])
    seeds = overrides.pop("seeds", [0])
    config = RunConfig.from_recipe(RECIPES["avmnist"], tmp_path / "no_data_here", methods, seeds, tiny=True,
                                   **overrides)
    with pytest.raises(ValueError, match=message):
        run_recipe(config)


def test_the_command_reports_a_broken_folder_and_exits_2(tmp_path, capsys):
    root = make_avmnist(tmp_path, 20, 10)
    (root / "audio" / "test_data.npy").unlink()
    assert main(["avmnist", "--root", str(root), "--tiny", "--epochs", "1", "--workers", "0", "--device", "cpu"]) == 2
    assert "test_data.npy: the test audio is missing (expected a file)" in capsys.readouterr().err


def test_the_pipeline_learns_a_learnable_fixture(tmp_path):
    """AV-MNIST's fixture marks each digit with a stripe of pixels and a band of the spectrogram: six epochs of the
    published SGD (lr 0.1) on the tiny LeNets classify the test rows, so the labels reach the model with their
    inputs and the updates train it (chance is 0.1)."""
    root = make_avmnist(tmp_path / "data", 40, 20)
    config = RunConfig.from_recipe(RECIPES["avmnist"], root, ["joint"], [0], epochs=6, batch_size=8, tiny=True)
    assert run_recipe(config)["joint"]["fused_acc"] >= 0.9


@pytest.mark.gpu_slow  # DataLoader workers and three trainings: after the fast tests on a GPU machine
def test_recipe_on_cuda_with_amp(tmp_path, cuda_device):
    """conftest's cuda_device: a visible skip without a GPU, a failure under MIMO_EXT_TEST_DEVICE=cuda."""
    root = make_avmnist(tmp_path / "data", 40, 20)
    config = RunConfig.from_recipe(RECIPES["avmnist"], root, ["joint", "mimo", "mimo_fused"], [0], epochs=6,
                                   batch_size=8, tiny=True, device=cuda_device, amp=True, workers=2)
    results = run_recipe(config)
    assert results["joint"]["fused_acc"] >= 0.9 and results["mimo"]["settings"]["amp"] == "bf16"
    assert all(r["peak_memory_bytes"] > 0 for r in results.values())
