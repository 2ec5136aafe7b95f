"""MIMO under torch.distributed: globally consistent weights.

The MIMO weights ``softmax(f / mu)`` depend on the uni-modal losses. Under data parallelism each rank sees a shard
of the batch, so weights computed from local losses differ between ranks and the averaged gradient is not the
MIMO direction of the global batch. Consistent weights cost one all-reduce of M scalars: average the uni-modal
losses over the ranks (on the device, no host synchronisation) and take the weights from those. With equal shard
sizes the mean of the local losses is the global batch's loss, so every rank uses the weights of the global batch.

Reduction is on by default whenever ``torch.distributed`` is initialised with more than one rank; ``sync=False``
turns it off, ``process_group=`` picks the group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean", "resolve_group"]


def resolve_group(sync: bool | None, process_group=None):
    """The process group to average the uni-modal losses over, or None for no reduction.

    Args:
        sync: None (default): reduce when torch.distributed is initialised with more than one rank in the group;
            True: reduce (an error when torch.distributed is not initialised); False: never.
        process_group: the group; default the world.
    """
    if sync is False:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        if sync:
            raise RuntimeError("sync=True needs an initialised torch.distributed process group")
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    if dist.get_world_size(group) == 1 and not sync:
        return None
    return group


def all_reduce_mean(tensor: torch.Tensor, group) -> torch.Tensor:
    """Mean over the group's ranks, out of place. Runs on the tensor's device and stream without a host
    synchronisation, and is traceable by torch.compile (a functional collective)."""
    from torch.distributed import _functional_collectives as funcol

    total = funcol.all_reduce(tensor, "sum", group)
    return funcol.wait_tensor(total) / dist.get_world_size(group)
