"""Small compatibility shims between nerfstudio 1.1.5 and current torch, applied when the plugin is imported."""

from __future__ import annotations

import numpy as np
import torch


def allow_numpy_scalars_in_checkpoints() -> None:
    """Let `torch.load(weights_only=True)` (torch >= 2.6's default) read nerfstudio checkpoints.

    nerfstudio's exponential-decay scheduler computes learning rates with numpy, so every checkpoint stores
    numpy float64 scalars in the scheduler state. `ns-eval`, `ns-render` and `ns-viewer` call `torch.load`
    with torch's default, which refuses those. A numpy scalar is rebuilt from a dtype and raw bytes and runs no
    code, so allowlisting exactly these types keeps the safe loader safe.
    """
    try:  # numpy 2 moved numpy.core to numpy._core (1.26 has a partial numpy._core)
        from numpy._core.multiarray import scalar
    except ImportError:
        from numpy.core.multiarray import scalar
    allowed = [scalar, np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]
    torch.serialization.add_safe_globals(allowed)
