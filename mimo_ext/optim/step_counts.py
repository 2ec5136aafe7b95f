"""Per-parameter step counts of one flat bucket, kept as device tensors without host synchronisation.

torch.optim counts steps per parameter (AdamW's bias correction, SGD's first momentum step). Parameters that have
stepped on exactly the same steps have the same count, so they share one 0-dim float32 device tensor: a *class*.
In the usual run every parameter steps every time and the bucket has one class, i.e. one count for one fused
launch. A step that reaches only part of a class (a modality dropped on that step, a parameter first reached later)
splits it: the reached part continues with a copy of the count, on the device. The kernels advance a count in
place (unless found_inf is set), so counts stay exact under GradScaler's skipped steps without being read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["StepCounts"]


class StepCounts:
    """Which count each parameter of a bucket uses (``member[i]``), and the counts (``counts[class_id]``)."""

    def __init__(self, num_params: int, device: torch.device, values: Sequence[float] | None = None) -> None:
        self.device = device
        self.counts: dict[int, torch.Tensor] = {}
        self.member: list[int] = [0] * num_params
        self._next_id = 0
        self.reset(values)

    def reset(self, values: Sequence[float] | None = None) -> None:
        """Every count set to ``values[i]`` (host numbers, e.g. from a checkpoint), or to 0."""
        values = [0.0] * len(self.member) if values is None else [float(v) for v in values]
        self.counts = {}
        by_value: dict[float, int] = {}
        for i, value in enumerate(values):
            if value not in by_value:
                by_value[value] = self._new_class(torch.full((), value, dtype=torch.float32, device=self.device))
            self.member[i] = by_value[value]

    def _new_class(self, count: torch.Tensor) -> int:
        self._next_id += 1
        self.counts[self._next_id] = count
        return self._next_id

    def of(self, index: int) -> torch.Tensor:
        """Parameter ``index``'s count (shared with its class: read it, do not write it)."""
        return self.counts[self.member[index]]

    def partly_reached(self, reached: Sequence[bool]) -> list[int]:
        """The classes of which ``reached`` flags some members but not all (the ones :meth:`split` splits)."""
        reached_of: dict[int, set[bool]] = {}
        for cls, hit in zip(self.member, reached, strict=True):
            reached_of.setdefault(cls, set()).add(bool(hit))
        return [cls for cls, hits in reached_of.items() if len(hits) == 2]

    def without_elements(self, reached: Sequence[bool], numels: Sequence[int]) -> list[torch.Tensor]:
        """The counts of reached classes whose reached members hold no elements here (zero-size parameters, or
        empty local shards on this rank): no launch advances them, so the caller does, as torch.optim counts a step
        of an empty parameter."""
        launched = {cls for cls, hit, n in zip(self.member, reached, numels, strict=True) if hit and n}
        hit = {cls for cls, h in zip(self.member, reached, strict=True) if h}
        return [self.counts[cls] for cls in sorted(hit - launched)]

    def split(self, reached: Sequence[bool]) -> bool:
        """Before a step that reaches the parameters flagged in ``reached``: the reached members of a class that is
        only partly reached move to a new class holding a copy of its count. Returns whether any class was split."""
        partial = {cls: None for cls in self.partly_reached(reached)}
        for i, hit in enumerate(reached):
            cls = self.member[i]
            if hit and cls in partial:
                if partial[cls] is None:
                    partial[cls] = self._new_class(self.counts[cls].clone())
                self.member[i] = partial[cls]
        return bool(partial)

    def runs(
        self, reached: Sequence[bool], offsets: Sequence[int], numels: Sequence[int], *, merge: bool = True
    ) -> list[tuple[int, int, torch.Tensor]]:
        """Element ranges ``(start, stop, count)`` covering the runs of consecutive reached, non-empty parameters of
        one class (each reached parameter alone with merge=False), each with the count its launch reads and
        advances. Call after :meth:`split`. A class met in several runs advances once: its later runs get a copy
        of the count taken before the step, which the launch advances and which is then dropped."""
        spans: list[tuple[int, int, int]] = []
        for i, hit in enumerate(reached):
            if not hit or numels[i] == 0:
                continue
            start, stop, cls = offsets[i], offsets[i] + numels[i], self.member[i]
            if merge and spans and spans[-1][1] == start and spans[-1][2] == cls:
                spans[-1] = (spans[-1][0], stop, cls)
            else:
                spans.append((start, stop, cls))
        seen: set[int] = set()
        repeated: set[int] = set()
        for _, _, cls in spans:  # one pass: this runs every step, with one span per parameter when sharded
            (repeated if cls in seen else seen).add(cls)
        before = {cls: self.counts[cls].clone() for cls in repeated}
        out, advanced = [], set()
        for start, stop, cls in spans:
            count = self.counts[cls] if cls not in advanced else before[cls].clone()
            advanced.add(cls)
            out.append((start, stop, count))
        return out

    def values(self) -> list[torch.Tensor]:
        """One count per parameter, as separate 0-dim tensors (copies): torch.optim's ``state[p]["step"]``."""
        return [self.counts[cls].clone() for cls in self.member]

    def prune(self) -> None:
        """Drops counts no parameter uses any more."""
        used = set(self.member)
        self.counts = {cls: count for cls, count in self.counts.items() if cls in used}
