"""One benchmark run: its settings, its results (JSON-ready), the state its sections share, and how a section runs
(timed, its error recorded, the JSON rewritten)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ednerf_ns.bench.gpu.config import GpuBenchConfig
from ednerf_ns.bench.gpu.timing import Clock, log, r3, release_memory


class BenchCore:
    """One benchmark run: settings, results (JSON-ready) and the state shared by its sections."""

    def __init__(self, cfg: GpuBenchConfig) -> None:
        self.cfg = cfg
        self.tiny = cfg.mode == "tiny"
        wanted = cfg.device if cfg.device != "auto" else ("cpu" if self.tiny else "cuda")
        if wanted == "cuda" and not torch.cuda.is_available():
            raise SystemExit("ednerf-bench gpu: no CUDA device here; use --mode tiny for the CPU smoke run")
        self.device = torch.device(wanted)
        self.clock = Clock(self.device)
        self.start = time.perf_counter()

        def pick(value, sd15, tiny):
            return value if value is not None else (tiny if self.tiny else sd15)

        self.resolution = pick(cfg.resolution, 512, 64)
        self.views = pick(cfg.views, 24, 8)
        self.train_steps = pick(cfg.train_steps, 300, 3)
        self.train_warmup = pick(cfg.train_warmup, 20, 1)
        self.edit_steps = pick(cfg.edit_steps, 60, 2)
        self.edit_warmup = pick(cfg.edit_warmup, 10, 1)
        self.full_edit = cfg.full_edit and not self.tiny
        self.unet_iters = pick(cfg.unet_iters, 30, 2)
        self._own_workdir = cfg.workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="ednerf-bench-")) if cfg.workdir is None else cfg.workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model_dir: Path | None = None
        self.data_dir: Path | None = None
        self.train_run: Path | None = None
        self.result: dict[str, Any] = {
            "benchmark": "ednerf-bench gpu",
            "mode": cfg.mode,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": _command_line(),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
            "timing": "CUDA events" if self.clock.cuda else "wall clock (time.perf_counter)",
            "errors": {},
            "skipped": {},
            "section_s": {},
        }

    # ------------------------------------------------------------------ plumbing
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def section(self, name: str, fn: Callable[[], Any]) -> bool:
        """Run one section; record its result, duration or error; write the JSON so far. True if it ran."""
        t0 = time.perf_counter()
        log(f"[{self.elapsed():6.1f}s] {name} ...")
        ok = True
        try:
            out = fn()
            if out is not None:
                self.result[name] = out
        except (Exception, SystemExit) as exc:  # one broken section must not cost the others' numbers (UserError
            # is a SystemExit)
            ok = False
            self.result["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
            traceback.print_exc()
        finally:
            self.result["section_s"][name] = r3(time.perf_counter() - t0)
            self.flush()
            release_memory()
        log(f"[{self.elapsed():6.1f}s] {name} {'done' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s")
        return ok

    def affordable(self, name: str, estimate_s: float) -> bool:
        if self.elapsed() + estimate_s <= self.cfg.time_budget_s:
            return True
        self.result["skipped"][name] = (
            f"time budget: {self.elapsed():.0f} s used, about {estimate_s:.0f} s needed, "
            f"budget {self.cfg.time_budget_s:.0f} s"
        )
        log(f"skipping {name}: {self.result['skipped'][name]}")
        self.flush()
        return False

    def flush(self) -> None:
        if self.cfg.output is not None:
            self.cfg.output.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cfg.output.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.result, indent=2, default=str) + "\n")
            os.replace(tmp, self.cfg.output)

    def diffusion(self):
        from ednerf_ns.models2d.diffusion import get_diffusion

        assert self.model_dir is not None
        return get_diffusion(str(self.model_dir), self.device, "auto")

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _command_line() -> str:
    program = Path(sys.argv[0]).name
    if program == "__main__.py":  # python -m ednerf_ns.bench.gpu
        program = "python -m ednerf_ns.bench.gpu"
    elif program == "ednerf-bench":
        program = "ednerf-bench gpu"
    return " ".join([program, *sys.argv[1:]])
