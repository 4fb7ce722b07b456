"""Small shims over nerfstudio 1.1.5 and the libraries it pins: current torch's checkpoint loader (applied when the
plugin is imported) and viser's icon reader (applied when a pipeline is built, before nerfstudio's viewer starts)."""

from __future__ import annotations

import tarfile
import threading
from pathlib import Path

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


def index_viser_icons() -> bool:
    """Make viser read a GUI icon by offset instead of scanning its icon tarball.

    viser 0.2.x (nerfstudio 1.1.5 pins 0.2.7) opens `tabler-icons.tar` (5 MB, 4285 icons) and scans it from the start
    for every icon: about 70 ms each, and nerfstudio's viewer asks for 17 while it builds its panels - 1.2 s of every
    `ns-train` and `ns-viewer` start. One scan builds the index (name -> offset, size); each icon is then one read,
    byte for byte what viser's own reader returns. Names the index does not hold go to viser's reader (its error).
    Returns whether the reader is now indexed; a viser without this layout is left untouched.
    """
    try:
        import viser._gui_api as gui_api
        import viser._gui_handles as gui_handles
        import viser._icons as icons
    except ImportError:
        return False
    original = getattr(icons, "svg_from_icon", None)
    tarball = Path(getattr(icons, "ICONS_DIR", "")) / "tabler-icons.tar"
    if original is None or getattr(original, "indexed_by_ednerf", False):
        return original is not None
    if not tarball.is_file():
        return False
    index: dict[str, tuple[int, int]] = {}
    lock = threading.Lock()  # the viewer builds panels from several threads

    def svg_from_icon(icon_name: str) -> str:
        with lock:
            if not index:
                with tarfile.open(tarball) as tar:
                    index.update({m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()})
        entry = index.get(f"{icon_name}.svg")
        if entry is None:
            return original(icon_name)
        with open(tarball, "rb") as f:
            f.seek(entry[0])
            return f.read(entry[1]).decode("utf-8")

    svg_from_icon.indexed_by_ednerf = True  # type: ignore[attr-defined]
    svg_from_icon.viser_reader = original  # type: ignore[attr-defined]
    for module in (icons, gui_api, gui_handles):  # the modules that imported the name
        if getattr(module, "svg_from_icon", None) is original:
            module.svg_from_icon = svg_from_icon
    return True
