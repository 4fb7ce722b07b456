"""Non-finite training steps, counted on the device and read on the host only now and then.

Reading a loss on the host every step (`float(loss)`, `torch.isfinite(loss).item()`) would make the CPU wait for
the GPU at every step. Instead each step adds to two device-side counters, updated in place (so they work the
same whether the step ran eagerly or was replayed from a CUDA graph), and the trainer reads them every few steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class StepHealth:
    """Device-side counts of training steps whose loss was NaN or infinite."""

    def __init__(self, device: torch.device | str) -> None:
        self.counts = torch.zeros(2, dtype=torch.long, device=device)
        """[non-finite steps in total, consecutive non-finite steps up to the latest one]."""
        self.reported = 0
        """The total at the last report (a warning is printed when it grows)."""

    def record(self, loss: Tensor) -> None:
        """Count one step (no host synchronisation)."""
        bad = (~torch.isfinite(loss.detach())).to(torch.long)
        self.counts[0].add_(bad)
        self.counts[1].add_(1).mul_(bad)  # consecutive: +1 on a bad step, back to 0 on a good one

    def read(self) -> tuple[int, int]:
        """(total, consecutive) on the host: one synchronisation."""
        total, consecutive = (int(v) for v in self.counts.tolist())
        return total, consecutive


def all_finite(module: nn.Module) -> bool:
    """Whether every parameter and buffer of `module` is finite (one synchronisation)."""
    tensors = [*module.parameters(), *module.buffers()]
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True
