"""MIMO with torch.distributed: a late-fusion model on mfeat (pix + fou), data-parallel over the ranks.

    torchrun --standalone --nproc_per_node=2 examples/ddp_mfeat.py                  # DDP + mimo_loss (one backward)
    torchrun --standalone --nproc_per_node=2 examples/ddp_mfeat.py --per-objective  # MIMOAdamW, per objective, no DDP

Both keep the ranks consistent: ``mimo_loss`` (and the optimizer) average the M uni-modal losses over the ranks
before the softmax, so every rank uses the global batch's weights. The single-backward path lets DDP all-reduce
the gradient once; the per-objective path blends locally and all-reduces the blended gradient once per bucket
(the model is not wrapped in DDP there). Runs on CPU with gloo, or on GPUs with NCCL (one per rank).
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
    parser.add_argument("--per-objective", action="store_true", help="MIMOAdamW.backward per objective, no DDP")
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
        if rank == 0 and (epoch + 1) % 5 == 0:
            fused_acc, heads = evaluate(model, [x.to(device) for x in test_x], test_y.to(device))
            print(f"epoch {epoch + 1}: fused {fused_acc:.3f}, head pix {heads[0]:.3f}, head fou {heads[1]:.3f}")
    # Leave together: a rank tearing the group down while another still works made gloo abort at exit.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
