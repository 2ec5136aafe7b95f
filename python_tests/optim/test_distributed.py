"""MIMO under torch.distributed: 2 ranks on the gloo backend (CPU, 127.0.0.1), each test bounded in time.

Two ranks with half the batch each must end where one process with the whole batch ends (the weights come from
the ranks' mean losses), for the single-backward path under DistributedDataParallel and for the fused optimizer's
per-objective path; ranks agree bit for bit on the weights; a rank that raises makes the job fail, not hang; and a
checkpoint written by rank 0 resumes identically. Under FSDP2 (fully_shard): mimo_loss with torch's AdamW and
with MIMOAdamW end where one process ends, the per-objective path is refused by name, a torch.distributed.checkpoint
round trip resumes bit-identically, also on one rank from a checkpoint of two; tensor-parallel (DTensor)
parameters step as with torch's AdamW.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time

import pytest
import torch
import torch.distributed as dist

from mimo_ext.optim import MIMOSGD
from python_tests.optim import dist_workers as w
from python_tests.references import smooth_max_weights

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

WORLD = 2
BOUND_S = 120.0  # wall-clock bound of one multi-process test


def launch(
    tmp_path, scenario: str, timeout_s: float = 30.0, world: int = WORLD, **kwargs
) -> tuple[list[int], list[dict], list[str]]:
    """Runs the scenario on ``world`` spawned ranks; returns their exit codes, results and error texts."""
    ctx = multiprocessing.get_context("spawn")
    rendezvous = str(tmp_path / f"rendezvous{world}")
    procs = [
        ctx.Process(target=w.run, args=(r, world, rendezvous, str(tmp_path), scenario, timeout_s, kwargs))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + BOUND_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    assert not hung, f"{len(hung)} rank(s) still running after {BOUND_S} s"
    results = [
        torch.load(tmp_path / f"rank{r}.pt") if (tmp_path / f"rank{r}.pt").exists() else None for r in range(world)
    ]
    errors = [
        (tmp_path / f"rank{r}.err").read_text() if (tmp_path / f"rank{r}.err").exists() else "" for r in range(world)
    ]
    return [p.exitcode for p in procs], results, errors


def assert_params_close(got, want):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


def test_ddp_single_backward_matches_one_process_with_the_whole_batch(tmp_path):
    codes, results, errors = launch(tmp_path, "ddp_single_backward")
    assert codes == [0, 0], errors
    net = w.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    w.train_single_backward(net, opt, range(w.STEPS))
    for r in range(WORLD):
        assert_params_close(results[r]["params"], w.params(net))
    # The ranks use the same weights, bit for bit.
    for a, b in zip(results[0]["weights"], results[1]["weights"], strict=True):
        assert torch.equal(a, b)


def test_local_weights_would_differ(tmp_path):
    # The reason for the reduction: the two shards' own weights are not the same (so the test above can fail).
    xs, y = w.batch(0)
    net = w.model()
    weights = []
    for r in range(WORLD):
        _, fs = w.losses(net, *w.shard(xs, y, r, WORLD))
        weights.append(smooth_max_weights(torch.stack(fs).detach(), 0.1))
    assert not torch.allclose(weights[0], weights[1], atol=1e-3)


def test_per_objective_path_matches_one_process_with_the_whole_batch(tmp_path):
    codes, results, errors = launch(tmp_path, "per_objective")
    assert codes == [0, 0], errors
    net = w.model()
    opt = MIMOSGD(net.parameters(), lr=0.5, momentum=0.9)
    w.train_per_objective(net, opt, range(w.STEPS))
    for r in range(WORLD):
        assert_params_close(results[r]["params"], w.params(net))
    for a, b in zip(results[0]["params"], results[1]["params"], strict=True):
        assert torch.equal(a, b)


def test_a_rank_that_raises_fails_the_job_instead_of_hanging(tmp_path):
    start = time.monotonic()
    codes, _, errors = launch(tmp_path, "bad_input_on_one_rank", timeout_s=5.0)
    assert all(code != 0 for code in codes), codes
    assert "uni_losses must be a non-empty sequence" in errors[1]
    assert errors[0], "rank 0 should fail (collective timeout or peer loss), not succeed"
    assert time.monotonic() - start < BOUND_S


def test_resume_from_a_rank0_checkpoint_continues_identically(tmp_path):
    codes, results, errors = launch(tmp_path, "resume_from_rank0_checkpoint", path=str(tmp_path / "ckpt.pt"))
    assert codes == [0, 0], errors
    for r in range(WORLD):
        for a, b in zip(results[r]["whole"], results[r]["resumed"], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", [[], ["--per-objective"], ["--fsdp"]], ids=["ddp", "per-objective", "fsdp2"])
def test_torchrun_example_runs(mode, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "ddp_mfeat.py"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    if mode == ["--fsdp"]:
        mode = [*mode, "--checkpoint", str(tmp_path / "dcp")]
    command = [*torchrun, str(script), "--epochs", "5", *mode]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BOUND_S)
    if done.returncode != 0 and "exitcode: -6" in done.stderr and "epoch 5: fused" in done.stdout:
        # A rank killed by SIGABRT after training finished: the teardown abort of gloo/DCP threads that a loaded
        # machine has shown once for the FSDP2 example (see the note in dist_workers.run). Run it once more, so
        # that only a failure that repeats fails the test; the first run's stderr is kept for the report.
        first = done.stderr[-1000:]
        if mode and mode[0] == "--fsdp":
            shutil.rmtree(tmp_path / "dcp", ignore_errors=True)
        done = subprocess.run(command, capture_output=True, text=True, timeout=BOUND_S)
        assert done.returncode == 0, f"failed twice; first run:\n{first}\nsecond run:\n{done.stderr[-1000:]}"
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch 5: fused" in done.stdout
    if "--fsdp" in mode:
        assert "saved a DCP checkpoint" in done.stdout and (tmp_path / "dcp" / ".metadata").exists()


# ---- FSDP2 (fully_shard): the encoders and the root sharded over the 2 ranks


def one_process_adamw(steps) -> list[torch.Tensor]:
    """torch.optim.AdamW on mimo_loss, one process, the whole batch: what the sharded runs must end at."""
    net = w.model()
    opt = torch.optim.AdamW(net.parameters(), lr=w.FSDP_LR, foreach=False)
    w.train_single_backward(net, opt, steps)
    return w.params(net)


@pytest.mark.parametrize("kind", ["torch", "mimo"])
def test_fsdp2_single_backward_matches_one_process_with_the_whole_batch(tmp_path, kind):
    codes, results, errors = launch(tmp_path, "fsdp_training", kind=kind)
    assert codes == [0, 0], errors
    want = one_process_adamw(range(w.STEPS))
    for r in range(WORLD):
        assert_params_close(results[r]["params"], want)
    if kind == "mimo":
        assert all(results[r]["state_is_dtensor"] and results[r]["saved_bytes"] > 0 for r in range(WORLD))
        message = results[0]["per_objective_error"]
        assert message and "per-objective path is not supported for sharded (DTensor) parameters" in message
        assert "mimo_loss" in message


@pytest.mark.parametrize("kind", ["torch", "mimo"])
def test_fsdp2_meta_init_with_the_optimizer_built_on_meta_trains_as_a_real_init(tmp_path, kind):
    """FSDP2's meta-init flow: sharded on meta, the optimizer built there, then to_empty and the weights set."""
    codes, results, errors = launch(tmp_path, "fsdp_meta_init", kind=kind)
    assert codes == [0, 0], errors
    want = one_process_adamw(range(w.STEPS))
    for r in range(WORLD):
        assert_params_close(results[r]["params"], want)


def test_fsdp2_checkpoint_round_trip_resumes_with_the_same_next_steps(tmp_path):
    codes, results, errors = launch(tmp_path, "fsdp_checkpoint_round_trip", path=str(tmp_path / "dcp"))
    assert codes == [0, 0], errors
    for r in range(WORLD):
        for a, b in zip(results[r]["whole"], results[r]["resumed"], strict=True):
            assert torch.equal(a, b)


def test_fsdp2_checkpoint_of_two_ranks_resumes_on_one(tmp_path):
    path = str(tmp_path / "dcp")
    codes, _, errors = launch(tmp_path, "fsdp_save_after_three_steps", path=path)
    assert codes == [0, 0], errors
    codes, results, errors = launch(tmp_path, "fsdp_resume_on_this_world", world=1, path=path)
    assert codes == [0], errors
    assert_params_close(results[0]["params"], one_process_adamw(range(w.STEPS + 2)))


def test_tensor_parallel_parameters_step_as_torch_and_partial_grads_are_refused(tmp_path):
    codes, results, errors = launch(tmp_path, "tensor_parallel")
    assert codes == [0, 0], errors
    for r in range(WORLD):
        assert_params_close(results[r]["mimo"], results[r]["torch"])
        assert "Partial placement" in results[r]["partial_error"]
        assert results[r]["stale_backward_refused"]
