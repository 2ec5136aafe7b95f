"""Worker side of the distributed tests (optim/test_distributed.py): each function runs in one of the spawned ranks, on
the gloo backend over 127.0.0.1 (a file rendezvous), and returns what the test compares."""

from __future__ import annotations

import io
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

import mimo_ext
from mimo_ext.models import LateFusionMLP
from mimo_ext.optim import MIMOSGD

DIMS = (5, 4)
CLASSES = 3
BATCH = 16
STEPS = 5


def batch(step: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    xs = [torch.randn(BATCH, d, generator=g) for d in DIMS]
    # Labels tied to the first modality so the losses differ and the weights move.
    return xs, (xs[0][:, 0] > 0).long() + (xs[1][:, 0] > 1).long()


def shard(xs, y, rank: int, world: int):
    return [x[rank::world] for x in xs], y[rank::world]


def model() -> LateFusionMLP:
    torch.manual_seed(0)
    return LateFusionMLP(DIMS, CLASSES, hidden=8, feature_dim=4)


def losses(net, xs, y):
    fused, uni = net(xs)
    return F.cross_entropy(fused, y), [F.cross_entropy(u, y) for u in uni]


def train_single_backward(net, opt, steps, rank=0, world=1, weights_log=None):
    """mimo_loss(...).backward() then opt.step(); world > 1: net is DDP-wrapped and each rank takes a shard."""
    for step in steps:
        xs, y = shard(*batch(step), rank, world)
        f0, fs = losses(net, xs, y)
        opt.zero_grad()
        mimo_ext.mimo_loss(f0, fs).backward()
        opt.step()
        if weights_log is not None:
            group = mimo_ext.distributed.resolve_group(None)
            stacked = torch.stack(fs).detach()
            if group is not None:
                stacked = mimo_ext.distributed.all_reduce_mean(stacked, group)
            weights_log.append(mimo_ext.smooth_max(stacked, mimo_ext.DEFAULT_MU)[1])


def train_per_objective(net, opt, steps, rank=0, world=1):
    for step in steps:
        xs, y = shard(*batch(step), rank, world)
        f0, fs = losses(net, xs, y)
        opt.zero_grad()
        opt.backward(f0, fs)
        opt.step()


def params(net) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


# ---- the scenarios (each returns a picklable result for its rank)


def ddp_single_backward(rank: int, world: int) -> dict:
    net = model()
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    log: list[torch.Tensor] = []
    train_single_backward(ddp, opt, range(STEPS), rank, world, log)
    return {"params": params(net), "weights": log}


def per_objective(rank: int, world: int) -> dict:
    net = model()
    opt = MIMOSGD(net.parameters(), lr=0.5, momentum=0.9)
    train_per_objective(net, opt, range(STEPS), rank, world)
    return {"params": params(net)}


def bad_input_on_one_rank(rank: int, world: int) -> dict:
    net = model()
    xs, y = shard(*batch(0), rank, world)
    f0, fs = losses(net, xs, y)
    # Rank 1 passes no uni-modal losses: it must raise at once, and rank 0, left waiting in the all-reduce, must
    # fail at the process group's timeout instead of hanging.
    mimo_ext.mimo_loss(f0, fs if rank == 0 else []).backward()
    return {}


def resume_from_rank0_checkpoint(rank: int, world: int, path: str) -> dict:
    whole = model()
    opt = MIMOSGD(whole.parameters(), lr=0.5, momentum=0.9)
    train_per_objective(whole, opt, range(STEPS), rank, world)

    first = model()
    opt = MIMOSGD(first.parameters(), lr=0.5, momentum=0.9)
    train_per_objective(first, opt, range(3), rank, world)
    if rank == 0:
        torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, path)
    dist.barrier()
    saved = torch.load(path)
    resumed = model()
    resumed.load_state_dict(saved["model"])
    opt = MIMOSGD(resumed.parameters(), lr=0.5, momentum=0.9)
    opt.load_state_dict(saved["opt"])
    train_per_objective(resumed, opt, range(3, STEPS), rank, world)
    return {"whole": params(whole), "resumed": params(resumed)}


# ---- FSDP2 (fully_shard): the encoders and the root sharded, as a user shards a late-fusion model

FSDP_LR = 0.05


def sharded_model():
    from torch.distributed.fsdp import fully_shard

    net = model()
    for encoder in net.encoders:
        fully_shard(encoder)
    fully_shard(net)
    return net


def make_optimizer(kind: str, net):
    if kind == "torch":
        return torch.optim.AdamW(net.parameters(), lr=FSDP_LR, foreach=True)
    return mimo_ext.optim.MIMOAdamW(net.parameters(), lr=FSDP_LR)


def full_params(net) -> list[torch.Tensor]:
    """The whole parameters (all-gathered from the shards), on every rank."""
    return [p.full_tensor().detach().clone() for p in net.parameters()]


def fsdp_training(rank: int, world: int, kind: str) -> dict:
    net = sharded_model()
    opt = make_optimizer(kind, net)
    train_single_backward(net, opt, range(STEPS), rank, world)
    result = {"params": full_params(net)}
    if kind == "mimo":
        # The state is flat over the local shards and exposed as DTensors with the parameters' placements.
        p = next(iter(net.parameters()))
        state = opt.state[p]["exp_avg"]
        result["state_is_dtensor"] = type(state).__name__ == "DTensor" and state.placements == p.placements
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)  # per-parameter state: torch can save DTensor state of its own storage
        result["saved_bytes"] = buffer.tell()
        f0, fs = losses(net, *shard(*batch(0), rank, world))
        try:
            opt.backward(f0, fs)
            result["per_objective_error"] = None
        except ValueError as error:
            result["per_objective_error"] = str(error)
    return result


def fsdp_meta_init(rank: int, world: int, kind: str) -> dict:
    """FSDP2's meta-device initialisation: the model made on meta and sharded, the optimizer built on its meta
    parameters, then ``to_empty`` and the weights set (here: model()'s, shard by shard), then training."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    full = model().state_dict()
    with torch.device("meta"):
        net = LateFusionMLP(DIMS, CLASSES, hidden=8, feature_dim=4)
    for encoder in net.encoders:
        fully_shard(encoder)
    fully_shard(net)
    opt = make_optimizer(kind, net)
    net.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.to_local().copy_(distribute_tensor(full[name], p.device_mesh, p.placements).to_local())
        for name, b in net.named_buffers():
            b.copy_(full[name])
    train_single_backward(net, opt, range(STEPS), rank, world)
    return {"params": full_params(net)}


def fsdp_checkpoint_round_trip(rank: int, world: int, path: str, kind: str = "mimo") -> dict:
    """Trains 3 steps, saves model + optimizer with torch.distributed.checkpoint, loads them into a fresh model and
    optimizer (different initial values) and trains on; beside an uninterrupted run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    whole = sharded_model()
    opt = make_optimizer(kind, whole)
    train_single_backward(whole, opt, range(STEPS + 2), rank, world)

    first = sharded_model()
    opt = make_optimizer(kind, first)
    train_single_backward(first, opt, range(3), rank, world)
    model_sd, optim_sd = get_state_dict(first, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    dist.barrier()

    torch.manual_seed(123)
    resumed = sharded_model()
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)  # loading must overwrite these
    opt = make_optimizer(kind, resumed)
    model_sd, optim_sd = get_state_dict(resumed, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(resumed, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    train_single_backward(resumed, opt, range(3, STEPS + 2), rank, world)
    return {"whole": full_params(whole), "resumed": full_params(resumed)}


def fsdp_save_after_three_steps(rank: int, world: int, path: str) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    net = sharded_model()
    opt = make_optimizer("mimo", net)
    train_single_backward(net, opt, range(3), rank, world)
    model_sd, optim_sd = get_state_dict(net, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    return {}


def fsdp_resume_on_this_world(rank: int, world: int, path: str) -> dict:
    """Loads fsdp_save_after_three_steps's checkpoint (written by another number of ranks) and trains on."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    net = sharded_model()
    opt = make_optimizer("mimo", net)
    model_sd, optim_sd = get_state_dict(net, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(net, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    train_single_backward(net, opt, range(3, STEPS + 2), rank, world)
    return {"params": full_params(net)}


def tensor_parallel(rank: int, world: int) -> dict:
    """A column-parallel Linear (weight and bias Shard(0) over the ranks) stepped by MIMOAdamW and by torch's
    AdamW; then a .grad with a Partial placement (its reduction pending), which the fused step refuses."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Partial, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (world,))
    nets = []
    for kind in ("torch", "mimo"):
        torch.manual_seed(0)
        net = parallelize_module(torch.nn.Linear(4, 6), mesh, ColwiseParallel())
        opt = make_optimizer(kind, net)
        for step in range(STEPS):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            net(x).pow(2).mean().backward()  # each rank's loss on its own output columns
            opt.step()
        nets.append(net)
    result = {"torch": full_params(nets[0]), "mimo": full_params(nets[1])}
    net = nets[1]
    opt = make_optimizer("mimo", net)
    # A step bumps the DTensor parameters' version counters, as torch's in-place update does.
    loss = (net.weight * net.weight).sum()  # saves the parameter for its backward
    loss.backward(retain_graph=True)
    opt.step()
    try:
        loss.backward()
        result["stale_backward_refused"] = False
    except RuntimeError as error:
        result["stale_backward_refused"] = "modified by an inplace operation" in str(error)
    opt.zero_grad()
    net.weight.grad = distribute_tensor(torch.ones(6, 4), mesh, [Partial()])
    net.bias.grad = None
    try:
        opt.step()
        result["partial_error"] = None
    except ValueError as error:
        result["partial_error"] = str(error)
    return result


SCENARIOS = {
    f.__name__: f
    for f in (
        tensor_parallel,
        ddp_single_backward,
        per_objective,
        bad_input_on_one_rank,
        resume_from_rank0_checkpoint,
        fsdp_training,
        fsdp_meta_init,
        fsdp_checkpoint_round_trip,
        fsdp_save_after_three_steps,
        fsdp_resume_on_this_world,
    )
}


def run(rank: int, world: int, rendezvous: str, out_dir: str, scenario: str, timeout_s: float, kwargs: dict) -> None:
    """Process entry point: join the group, run the scenario, save its result (or the error) for the test."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )
    try:
        result = SCENARIOS[scenario](rank, world, **kwargs)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # leave together: tearing gloo down while a peer still works can abort at exit
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
    # The result is on disk: leave without the interpreter's teardown, where a thread left by gloo or by
    # torch.distributed.checkpoint's writer has aborted the process ("terminate called without an active
    # exception", once in a CI run under load).
    os._exit(0)
