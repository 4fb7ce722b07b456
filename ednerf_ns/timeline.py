"""Wall-clock marks of a training or edit process's phases, written next to the run as `timeline.json`.

`ednerf-bench e2e` times `ns-train` from outside (process start to exit) and reads these marks to say where the
time went: imports, configuration, dataset, model, latents, source run, first step, steps, final save. Marks are
plain `time.time()` values (comparable across processes on one machine); a name marked twice keeps its last
time. Standard library only, so importing it costs nothing and every layer may use it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

FILE_NAME = "timeline.json"

# The phases of one command, in order: each ends at its mark (the first starts when the process starts).
PHASES: tuple[tuple[str, str], ...] = (
    ("imports", "plugin_imported"),
    ("configuration", "setup_start"),
    ("dataset", "dataset_read"),
    ("model", "model_built"),
    ("latents", "latents_ready"),
    ("source run and prompts", "pipeline_ready"),
    ("trainer setup", "setup_done"),
    ("first step", "first_step"),
    ("steps", "steps_done"),
    ("final save", "saved"),
)

_marks: dict[str, float] = {}


def mark(name: str) -> None:
    """Record that `name` happened now (a later mark of the same name replaces it)."""
    _marks.pop(name, None)
    _marks[name] = time.time()


def marks() -> dict[str, float]:
    """The marks so far, in the order they were (last) made."""
    return dict(_marks)


def write(folder: Path) -> Path:
    """Write the marks to `folder`/timeline.json (atomically: a reader never sees half a file)."""
    path = Path(folder) / FILE_NAME
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "marks": marks()}, indent=1))
    os.replace(tmp, path)
    return path


def phases(recorded: dict[str, float], start: float, end: float) -> dict[str, float]:
    """Seconds per phase of PHASES between `start` (process start) and `end` (exit); a phase whose mark is missing
    (an edit-only phase in training) is merged into the next one. The remainder after the last mark is `exit`."""
    out: dict[str, float] = {}
    previous = start
    for phase, name in PHASES:
        if name not in recorded:
            continue
        out[phase] = round(recorded[name] - previous, 3)
        previous = recorded[name]
    out["exit"] = round(end - previous, 3)
    return out
