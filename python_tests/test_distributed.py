"""MIMO under torch.distributed: 2 ranks on the gloo backend (CPU, 127.0.0.1), each test bounded in time.

Two ranks with half the batch each must end where one process with the whole batch ends (the weights come from
the ranks' mean losses), for the single-backward path under DistributedDataParallel and for the fused optimizer's
per-objective path; ranks agree bit for bit on the weights; a rank that raises makes the job fail, not hang; and a
checkpoint written by rank 0 resumes identically.
"""

from __future__ import annotations

import multiprocessing
import time

import dist_workers as w
import pytest
import torch
import torch.distributed as dist

from mimo_ext.optim import MIMOSGD

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

WORLD = 2
BOUND_S = 120.0  # wall-clock bound of one multi-process test


def launch(tmp_path, scenario: str, timeout_s: float = 30.0, **kwargs) -> tuple[list[int], list[dict], list[str]]:
    """Runs the scenario on WORLD spawned ranks; returns their exit codes, results and error texts."""
    ctx = multiprocessing.get_context("spawn")
    rendezvous = str(tmp_path / "rendezvous")
    procs = [
        ctx.Process(target=w.run, args=(r, WORLD, rendezvous, str(tmp_path), scenario, timeout_s, kwargs))
        for r in range(WORLD)
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
        torch.load(tmp_path / f"rank{r}.pt") if (tmp_path / f"rank{r}.pt").exists() else None for r in range(WORLD)
    ]
    errors = [
        (tmp_path / f"rank{r}.err").read_text() if (tmp_path / f"rank{r}.err").exists() else "" for r in range(WORLD)
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
        weights.append(torch.softmax(torch.stack(fs).detach() / 0.1, 0))
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


@pytest.mark.parametrize("mode", [[], ["--per-objective"]], ids=["ddp", "per-objective"])
def test_torchrun_example_runs(mode):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "ddp_mfeat.py"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*torchrun, str(script), "--epochs", "5", *mode], capture_output=True, text=True, timeout=BOUND_S
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch 5: fused" in done.stdout
