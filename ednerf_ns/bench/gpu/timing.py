"""Timing: clock marks (CUDA events and the host's clock), per-phase records of training steps taken inside
nerfstudio's own loop, their statistics, and small helpers the sections share."""

from __future__ import annotations

import functools
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from ednerf_ns.accel.step_graph import is_capturing


class Clock:
    """Time marks: a CUDA event (no host synchronisation) and the host's wall clock on a CUDA device; the wall clock
    alone elsewhere.

    Event times follow the GPU's timeline; wall-clock times say how long the CPU took to issue the same work. When
    the two agree for a phase, the GPU waited for the CPU (launch-bound); when the GPU time is larger, it is busy.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> tuple[Any, float]:
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        return event, time.perf_counter()

    def ms(self, start: tuple[Any, float], end: tuple[Any, float]) -> float:
        """Milliseconds between two marks: GPU timeline on CUDA (call `sync` first), wall clock elsewhere."""
        return float(start[0].elapsed_time(end[0])) if self.cuda else (end[1] - start[1]) * 1000.0

    @staticmethod
    def wall_ms(start: tuple[Any, float], end: tuple[Any, float]) -> float:
        """Milliseconds of host time between two marks."""
        return (end[1] - start[1]) * 1000.0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class StepRecorder:
    """Start and end marks of named phases, grouped by training step, taken inside nerfstudio's own loop.

    The phases are the real methods of the trainer, pipeline and model, wrapped on their instances for the
    duration of one run; the wrappers only record marks, so the loop itself is unchanged.
    """

    def __init__(self, clock: Clock, sync_start: int = -1, sync_steps: int = 0, memory_reset_step: int = -1) -> None:
        self.clock = clock
        self.steps: list[dict[str, Any]] = []
        self.sync_start = sync_start
        self.sync_end = sync_start + sync_steps
        self.memory_reset_step = memory_reset_step
        self.peak_before_reset = 0
        """Peak allocated memory up to `memory_reset_step`, where the peak is reset so that the steady steps'
        peak (without one-time autotuning or graph capture) can be read separately."""
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, name: str, fn: Callable, begins_step: bool) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if is_capturing():  # an event recorded during a CUDA graph capture cannot be timed
                return fn(*args, **kwargs)
            if begins_step:
                step = int(args[0]) if args else int(kwargs.get("step", -1))
                self._sync_debug(step)
                if self.clock.cuda and step == self.memory_reset_step:
                    self.peak_before_reset = torch.cuda.max_memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                self.steps.append({"step": step, "marks": {}})
            start = self.clock.mark()
            out = fn(*args, **kwargs)
            end = self.clock.mark()
            if self.steps:
                self.steps[-1]["marks"].setdefault(name, []).append((start, end))
            return out

        return wrapper

    def _sync_debug(self, step: int) -> None:
        """torch's sync debug mode warns at every host synchronisation; on for steps [sync_start, sync_end)."""
        if not self.clock.cuda:
            return
        if step == self.sync_start:
            torch.cuda.set_sync_debug_mode(1)
        elif step == self.sync_end:
            torch.cuda.set_sync_debug_mode(0)

    def instrument(self, obj: object, attr: str, name: str, begins_step: bool = False) -> None:
        had_own = attr in vars(obj)
        original = getattr(obj, attr)
        setattr(obj, attr, self._wrap(name, original, begins_step))

        def undo() -> None:
            if had_own:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)

        self._undo.append(undo)

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        if self.clock.cuda:
            torch.cuda.set_sync_debug_mode(0)

    def summary(self, skip: int) -> dict[str, Any]:
        """Per-phase statistics (ms) over the steps after the first `skip`: on the GPU's timeline, and on CUDA
        also on the host's (see Clock)."""
        self.clock.sync()
        rows = [row for row in self.steps[skip:] if "iteration" in row["marks"]]
        step_ms, phases_ms = self._phases(rows, self.clock.ms)
        out: dict[str, Any] = {"steps": len(rows), "step_ms": step_ms, "phases_ms": phases_ms}
        if self.clock.cuda:
            out["step_host_ms"], out["phases_host_ms"] = self._phases(rows, self.clock.wall_ms)
        return out

    @staticmethod
    def _phases(rows: list[dict], ms: Callable[[Any, Any], float]) -> tuple[dict | None, dict[str, dict]]:
        starts = [row["marks"]["iteration"][0][0] for row in rows]
        periods = [ms(a, b) for a, b in zip(starts, starts[1:], strict=False)]
        names = sorted({name for row in rows for name in row["marks"]})
        phases = {
            name: [sum(ms(a, b) for a, b in row["marks"][name]) for row in rows if name in row["marks"]]
            for name in names
        }
        # Backward: from the end of the loss computation to the optimizer step (loss.backward() runs in between).
        phases["backward"] = [
            ms(row["marks"]["forward"][-1][1], row["marks"]["optimizer"][0][0])
            for row in rows
            if "forward" in row["marks"] and "optimizer" in row["marks"]
        ]
        if "unet" in phases and len(phases.get("loss", [])) == len(phases["unet"]):
            phases["loss_without_unet"] = [a - b for a, b in zip(phases["loss"], phases["unet"], strict=True)]
        # The trainer loop around train_iteration: writers, evaluations, checkpoints, callbacks.
        phases["loop_outside_iteration"] = [p - i for p, i in zip(periods, phases["iteration"], strict=False)]
        return stats(periods), {name: st for name, values in phases.items() if (st := stats(values))}


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "median": r3(statistics.median(ordered)),
        "mean": r3(statistics.fmean(ordered)),
        "min": r3(ordered[0]),
        "p90": r3(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]),
        "n": len(ordered),
    }


def r3(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def time_calls(clock: Clock, fn: Callable[[], Any], warmup: int, iters: int) -> dict[str, float] | None:
    """Per-call time (ms) of back-to-back calls of `fn` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    marks = [clock.mark()]
    for _ in range(iters):
        fn()
        marks.append(clock.mark())
    clock.sync()
    return stats([clock.ms(a, b) for a, b in zip(marks, marks[1:], strict=False)])


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def log(message: str) -> None:
    print(f"ednerf-bench: {message}", file=sys.stderr, flush=True)
