"""MIMO with torch.distributed: a late-fusion model on mfeat (pix + fou), data-parallel over the ranks.

    torchrun --standalone --nproc_per_node=2 examples/ddp_mfeat.py                  # DDP + mimo_loss (one backward)
    torchrun --standalone --nproc_per_node=2 examples/ddp_mfeat.py --per-objective  # MIMOAdamW, per objective, no DDP
    torchrun --standalone --nproc_per_node=2 examples/ddp_mfeat.py --fsdp --checkpoint /tmp/ckpt
                                            # FSDP2 (fully_shard) + mimo_loss + MIMOAdamW, a DCP checkpoint at the end

Both keep the ranks consistent: ``mimo_loss`` (and the optimizer) average the M uni-modal losses over the ranks
before the softmax, so every rank uses the global batch's weights. The single-backward path lets DDP all-reduce
the gradient once; the per-objective path blends locally and all-reduces the blended gradient once per bucket
(the model is not wrapped in DDP there). With --fsdp the encoders and the root are sharded with FSDP2's
``fully_shard`` (each rank holds half of every parameter), MIMOAdamW steps the local shards, and
``torch.distributed.checkpoint`` saves model and optimizer (resumable on another number of ranks). Runs on CPU
with gloo, or on GPUs with NCCL (one per rank).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

import mimo_ext
from mimo_ext.balance.compare import prepare_split
from mimo_ext.balance.evaluation import evaluate
from mimo_ext.datasets import load_mfeat
from mimo_ext.models import LateFusionMLP
from mimo_ext.optim import MIMOAdamW


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--per-objective", action="store_true", help="MIMOAdamW.backward per objective, no DDP")
    mode.add_argument("--fsdp", action="store_true", help="FSDP2 fully_shard + mimo_loss + MIMOAdamW")
    parser.add_argument("--checkpoint", default=None, help="with --fsdp: save a DCP checkpoint here at the end")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split over the ranks")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(1)

    xs, y = load_mfeat(("pix", "fou"))
    (train_x, train_y), (test_x, test_y) = prepare_split(xs, y, None, 0.2, split_seed=0)
    train_x, train_y = [x.to(device) for x in train_x], train_y.to(device)

    torch.manual_seed(0)  # the same initial model on every rank
    model = LateFusionMLP([x.shape[1] for x in train_x], 10).to(device)
    if args.per_objective:
        net, opt = model, MIMOAdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    elif args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for encoder in model.encoders:
            fully_shard(encoder)
        net = fully_shard(model)
        opt = MIMOAdamW(model.parameters(), lr=1e-3, weight_decay=0.0)  # steps each rank's local shards
    else:
        net = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)

    order = torch.Generator().manual_seed(0)  # the same permutation on every rank; each takes its share
    n = len(train_y)
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=order).to(device)
        for start in range(0, n - args.batch_size + 1, args.batch_size):
            idx = perm[start : start + args.batch_size][rank::world]
            fused, uni = net([x[idx] for x in train_x])
            f0 = F.cross_entropy(fused, train_y[idx])
            fs = [F.cross_entropy(u, train_y[idx]) for u in uni]
            opt.zero_grad()
            if args.per_objective:
                opt.backward(f0, fs)
            else:
                mimo_ext.mimo_loss(f0, fs).backward()
            opt.step()
        # A sharded model's forward needs every rank (FSDP2 all-gathers the parameters): all ranks evaluate.
        if (epoch + 1) % 5 == 0 and (rank == 0 or args.fsdp):
            fused_acc, heads = evaluate(model, [x.to(device) for x in test_x], test_y.to(device))
            if rank == 0:
                print(f"epoch {epoch + 1}: fused {fused_acc:.3f}, head pix {heads[0]:.3f}, head fou {heads[1]:.3f}")
    if args.fsdp and args.checkpoint:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(model, opt)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=args.checkpoint)
        if rank == 0:
            print(f"saved a DCP checkpoint to {args.checkpoint}")
    # Leave together: a rank tearing the group down while another still works made gloo abort at exit.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
