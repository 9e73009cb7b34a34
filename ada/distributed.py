"""The process group a run trains in: one process, or N ranks under torch.distributed.

`DistContext` is the only place the trainer talks to torch.distributed. With one process
every collective is the identity, so the loop reads the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world_size > 1 and tdist.is_available() and tdist.is_initialized()

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        out = t.to(self.device, copy=True)
        tdist.all_reduce(out)
        return out.to(t.device)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t) if self.active else t

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t) / self.world_size if self.active else t

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's parameters and buffers."""
        if not self.active:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, src=0)

    def sync_w_avg(self, G: torch.nn.Module) -> None:
        """Average the tracked w_avg: each rank updated it with its own batches' means, and the
        update is linear in those means, so the average equals the single-process value."""
        w_avg = getattr(G.mapping, "w_avg", None)
        if self.active and w_avg is not None:
            w_avg.copy_(self.all_reduce_mean(w_avg))

    def gather_states(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's value of `state` (an RNG state), so a resumed run continues each rank's stream."""
        if not self.active:
            return [state]
        states = [torch.empty_like(state) for _ in range(self.world_size)]
        tdist.all_gather_object(states, state)
        return states
