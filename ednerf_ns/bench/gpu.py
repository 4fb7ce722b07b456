"""`ednerf-bench gpu`: speed and memory of ED-NeRF at Stable Diffusion 1.5 size, measured through the real code.

What it does (mode `sd15`, on CUDA):
1. Builds random-weight components with the exact SD 1.5 architecture (no download), writes them in diffusers
   layout (fp16) and loads them back through `LatentDiffusion`, as a user's run does.
2. Times the UNet call of an edit step (batch 4 at the scene's latent size) in every variant in one process:
   eager, channels_last, CUDA-graph replay, both, and (with --compile) torch.compile with and without a graph;
   checks each against eager; counts its FLOPs and bytes and compares with the card's measured ceilings.
3. Renders a procedural 512 x 512 scene (64 x 64 latents) and trains `ed-nerf` with the method's default config
   in nerfstudio's real trainer loop for a few hundred steps; extrapolates the default step count honestly
   (measured loop + remaining steps x mean step + the evaluations and checkpoints the default run would do).
4. Edits that run with `ed-nerf-edit` at its default config and length, timing each step's phases (data,
   render + refine forward, metrics, loss with the UNet, backward, optimizer) with CUDA events, the peak memory,
   and the host synchronisations left in the loop; then short edits with the UNet variants.
Everything is printed as one JSON object (last line of stdout) and written to --output after every section.

Mode `tiny` runs the same measurements with the embedded tiny model on the CPU at small sizes (wall-clock timed):
a smoke test of this benchmark that runs in CI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import linecache
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
import torch.utils._pytree as pytree
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from ednerf_ns.accel.step_graph import is_capturing
from ednerf_ns.accel.unet_graph import UNetAcceleration, UNetRunner

# Stable Diffusion 1.5's architecture (see DESIGN.md "Stable Diffusion 1.5 architecture"); random weights.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SOURCE_PROMPT = "a red sphere on a gray checkered floor"
TARGET_PROMPT = "a blue sphere on a gray checkered floor"
# The targets on one H100 at SD 1.5 size.
TARGETS = {"edit_step_ms": 25.0, "edit_peak_memory_gb": 6.0, "edit_default_s": 60.0, "train_default_s": 300.0}


@dataclass
class GpuBenchConfig:
    """Speed and memory of training and editing at Stable Diffusion 1.5 size (or a CPU smoke run)."""

    mode: Literal["sd15", "tiny"] = "sd15"
    """sd15: random-weight SD 1.5-size model on CUDA and a 512 px scene. tiny: the embedded tiny model on the
    CPU at small sizes, the same measurements (a smoke test of this benchmark)."""
    output: Path | None = None
    """Also write the JSON result to this file (rewritten after every section, so an interrupted run keeps
    what it measured)."""
    workdir: Path | None = None
    """Where the model, the scene and the runs go. Default: a temporary folder, deleted at the end."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """auto = cuda for sd15, cpu for tiny."""
    resolution: int | None = None
    """Scene image size in pixels (latents are 1/8). Default 512 (sd15) / 64 (tiny)."""
    views: int | None = None
    """Rendered views of the scene; every 8th is held out. Default 24 (sd15) / 8 (tiny)."""
    train_steps: int | None = None
    """Measured ed-nerf training steps, after the warm-up. Default 300 (sd15) / 3 (tiny)."""
    train_warmup: int | None = None
    """ed-nerf steps run before measuring. Default 20 (sd15) / 1 (tiny)."""
    edit_steps: int | None = None
    """Measured steps of each short edit (the UNet variants), after the warm-up. Default 60 (sd15) / 2 (tiny)."""
    edit_warmup: int | None = None
    """Edit steps run before measuring (the first captures the CUDA graph). Default 10 (sd15) / 1 (tiny)."""
    full_edit: bool = True
    """Run the default edit at its full default length (configs.EDIT_STEPS) once (sd15; the tiny mode always runs
    a short edit and extrapolates)."""
    edit_variants: bool = True
    """Also run short edits without each speed-up (the fused hash grid, the step graph, the UNet graph): the
    before/after of each, in the same process."""
    unet_iters: int | None = None
    """Timed UNet calls per variant in the UNet benchmark. Default 30 (sd15) / 2 (tiny)."""
    train_variants: bool = True
    """Also time ed-nerf steps after the proposal-weight anneal (replayed from a CUDA graph), for the estimate
    of the default run."""
    compile: bool = False
    """Also time torch.compile of the UNet (with and without a CUDA graph); compiling takes a minute or more."""
    sync_window: int = 5
    """Steps of the training and edit loops run with torch's sync debug mode on, to list host synchronisations."""
    time_budget_s: float = 420.0
    """Skip the remaining optional sections (edit variants, compile) when they would end after this many seconds."""
    seed: int = 0
    """Seed of the scene's cameras, the model weights and the runs."""


# ---------------------------------------------------------------------------------------------------- timing
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


# ---------------------------------------------------------------------------------------------------- bench
class Bench:
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

    # ------------------------------------------------------------------ sections
    def environment(self) -> dict[str, Any]:
        import importlib.metadata
        import importlib.util

        def version(dist: str) -> str | None:
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                return None

        env: dict[str, Any] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "diffusers": version("diffusers"),
            "transformers": version("transformers"),
            "huggingface_hub": version("huggingface-hub"),
            "nerfstudio": version("nerfstudio"),
            "tinycudann": importlib.util.find_spec("tinycudann") is not None,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(self.device),
            "git_commit": _git_commit(),
        }
        if self.clock.cuda:
            props = torch.cuda.get_device_properties(self.device)
            env.update(
                card=torch.cuda.get_device_name(self.device),
                capability=f"{props.major}.{props.minor}",
                multiprocessors=props.multi_processor_count,
                memory_gb=r3(props.total_memory / 1e9),
                driver=_nvidia_smi("driver_version"),
            )
        else:
            env.update(card=platform.processor() or platform.machine(), driver=None)
        return env

    def ceilings(self) -> dict[str, Any] | None:
        """What this card really does: a large fp16 matrix product and a large device-to-device copy."""
        if not self.clock.cuda:
            return None
        n = 8192
        a = torch.randn(n, n, device=self.device, dtype=torch.float16)
        b = torch.randn(n, n, device=self.device, dtype=torch.float16)
        ms = self._time_calls(lambda: a @ b, warmup=3, iters=10)
        tflops = 2 * n**3 / (ms["median"] / 1e3) / 1e12
        x = torch.empty(1 << 29, device=self.device, dtype=torch.float16)  # 1 GiB
        y = torch.empty_like(x)
        copy = self._time_calls(lambda: y.copy_(x), warmup=2, iters=10)
        gbps = 2 * x.numel() * x.element_size() / (copy["median"] / 1e3) / 1e9  # bytes read + written
        return {"matmul_fp16_tflops": r3(tflops), "copy_gb_per_s": r3(gbps), "matmul_n": n, "copy_bytes": 1 << 30}

    def model(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tiny:
            import ednerf_ns.demo

            self.model_dir = Path(ednerf_ns.demo.__file__).parent / "weights"
            out["source"] = "embedded tiny model (ednerf_ns/demo/weights)"
        else:
            self.model_dir = self.workdir / "sd15-random"
            out.update(build_sd15(self.model_dir, self.device, self.cfg.seed))
            out["source"] = "random weights, SD 1.5 architecture, written in diffusers layout (fp16) and loaded back"
        diffusion = self.diffusion()
        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            t0 = time.perf_counter()
            module = getattr(diffusion, part)
            self.clock.sync()
            out[f"load_{part}_s"] = r3(time.perf_counter() - t0)
            if isinstance(module, torch.nn.Module):
                out[f"{part}_params_m"] = r3(sum(p.numel() for p in module.parameters()) / 1e6)
                out[f"{part}_bytes"] = sum(p.numel() * p.element_size() for p in module.parameters())
        out["dtype"] = str(diffusion.dtype)
        out["load_s"] = r3(sum(v for k, v in out.items() if k.startswith("load_") and k.endswith("_s")))
        return out

    def unet_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """The UNet batch of one DDS step: 4 x C x h x w latents, 4 timesteps, [uncond, tgt, uncond, src] text."""
        diffusion = self.diffusion()
        h = w = self.resolution // 8
        g = torch.Generator(device="cpu").manual_seed(self.cfg.seed)
        channels = int(diffusion.unet.config.in_channels)
        x = torch.randn(4, channels, h, w, generator=g).to(self.device, diffusion.dtype)
        t = torch.randint(50, 950, (4,), generator=g).to(self.device)
        text = diffusion.embed(["", TARGET_PROMPT, "", SOURCE_PROMPT])
        return x, t, text

    def unet(self, compiled: bool = False) -> dict[str, Any]:
        """Each UNet variant: time per call (median of `unet_iters`), first call (capture/compile), error vs eager."""
        diffusion = self.diffusion()
        unet = diffusion.unet
        x, t, text = self.unet_inputs()
        if compiled:
            variants = {
                "compile": UNetAcceleration(compile=True),
                "compile+cuda_graph": UNetAcceleration(compile=True, cuda_graph=True),
            }
        else:
            variants = {
                "eager": UNetAcceleration(),
                "channels_last": UNetAcceleration(channels_last=True),
                "cuda_graph": UNetAcceleration(cuda_graph=True),
                "cuda_graph+channels_last": UNetAcceleration(cuda_graph=True, channels_last=True),
            }
        with torch.no_grad():
            reference = UNetRunner(unet, UNetAcceleration()).run_direct(x, t, text).float()
        out: dict[str, Any] = {"input_shape": list(x.shape), "text_shape": list(text.shape), "dtype": str(x.dtype)}
        for name, options in variants.items():
            try:
                runner = UNetRunner(unet, options)
                t0 = time.perf_counter()
                first = runner(x, t, text)
                self.clock.sync()
                first_s = time.perf_counter() - t0
                timing = self._time_calls(lambda runner=runner: runner(x, t, text), warmup=2, iters=self.unet_iters)
                error = (first.float() - reference).norm() / reference.norm().clamp_min(1e-12)
                out[name] = {
                    "ms": timing,
                    "first_call_s": r3(first_s),
                    "rel_error_vs_eager": float(f"{float(error):.3e}"),
                    "effective": dataclasses.asdict(runner.options),
                    "runner": dataclasses.asdict(runner.stats),
                }
            except Exception as exc:
                out[name] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
                traceback.print_exc()
            finally:
                runner = None  # noqa: F841 - drop the graphs' memory pools before the next variant
                release_memory()
        UNetRunner(unet, UNetAcceleration())  # restores the default memory format
        base = (out.get("eager") or {}).get("ms")
        if base:
            for name in variants:
                ms = (out.get(name) or {}).get("ms")
                if ms:
                    out[name]["speedup_vs_eager"] = r3(base["median"] / ms["median"])
        return out

    def floors(self) -> dict[str, Any]:
        """FLOPs and bytes of one UNet call against the card's measured ceilings."""
        from torch.utils.flop_counter import FlopCounterMode

        diffusion = self.diffusion()
        unet = diffusion.unet
        x, t, text = self.unet_inputs()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            unet(x, t, encoder_hidden_states=text, return_dict=False)
        flops = int(counter.get_total_flops())
        by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
        with torch.no_grad(), OutputBytes() as written:
            unet(x, t, encoder_hidden_states=text, return_dict=False)
        weights = sum(p.numel() * p.element_size() for p in unet.parameters())
        io = sum(v.numel() * v.element_size() for v in (x, t, text)) + x.numel() * x.element_size()
        out: dict[str, Any] = {
            "unet_flops": flops,
            "unet_flops_by_op": by_op,
            "unet_weight_bytes": weights,
            "bytes_floor": weights + io,
            "activation_bytes_written_eager": written.bytes,
            "unet_flops_meta": flops_on_meta(dict(unet.config), tuple(x.shape), tuple(text.shape)),
            "sd15_unet_flops_batch4_64x64": flops_on_meta(SD15_UNET, (4, 4, 64, 64), (4, 77, 768)),
        }
        # The larger count is the complete one (the real call's may miss a fused attention kernel).
        flops = max(flops, out["unet_flops_meta"])
        out["flops_for_floor"] = flops
        ceilings = self.result.get("ceilings")
        timings = self.result.get("unet") or {}
        if ceilings:
            flop_rate = ceilings["matmul_fp16_tflops"] * 1e12
            bandwidth = ceilings["copy_gb_per_s"] * 1e9
            out["compute_floor_ms"] = r3(flops / flop_rate * 1e3)
            out["bytes_floor_ms"] = r3((weights + io) / bandwidth * 1e3)
            # Eager writes every intermediate and the next op reads it back: a floor for unfused execution.
            out["unfused_activation_traffic_ms"] = r3(2 * written.bytes / bandwidth * 1e3)
            for name in ("eager", "cuda_graph", "cuda_graph+channels_last"):
                ms = (timings.get(name) or {}).get("ms")
                if ms:
                    out[f"{name}_achieved_tflops"] = r3(flops / (ms["median"] / 1e3) / 1e12)
                    out[f"{name}_vs_compute_floor"] = r3(ms["median"] / out["compute_floor_ms"])
        return out

    def dataset(self) -> dict[str, Any]:
        from ednerf_ns.demo.scene import (
            ObjectSpec,
            SceneSpec,
            focal_from_fov,
            orbit_cameras,
            render,
            write_nerfstudio_dataset,
        )

        spec = SceneSpec(objects=[ObjectSpec("sphere", "red", size=0.55)])
        t0 = time.perf_counter()
        self.data_dir = write_nerfstudio_dataset(
            spec,
            self.workdir / "scene",
            num_views=self.views,
            resolution=self.resolution,
            seed=self.cfg.seed,
            supersample=1,
            write_split=True,
        )
        write_s = time.perf_counter() - t0
        out: dict[str, Any] = {
            "views": self.views,
            "resolution": self.resolution,
            "latent_size": self.resolution // 8,
            "supersample": 1,
            "write_s": r3(write_s),
            "cpu_render_and_png_ms_per_view": r3(write_s / self.views * 1e3),
        }
        if self.clock.cuda:  # the same renderer on the GPU, for reference
            c2w = orbit_cameras(4, 3.2, (12.0, 50.0), spec.center(), self.cfg.seed)
            f = focal_from_fov(self.resolution, 50.0)
            c = self.resolution / 2

            def draw() -> Tensor:
                return render(spec, c2w, f, f, c, c, self.resolution, self.resolution, device=self.device)[0]

            out["gpu_render_ms_per_view_supersample2"] = r3(self._time_calls(draw, warmup=1, iters=3)["median"] / 4)
        return out

    def train(self) -> dict[str, Any]:
        from ednerf_ns.configs import TRAIN_STEPS, ed_nerf_trainer
        from ednerf_ns.presets import apply_small_scene_preset

        config = ed_nerf_trainer()
        if self.tiny:
            apply_small_scene_preset(config)
        total = self.train_warmup + self.train_steps
        self._prepare(config, "train", total)
        config.pipeline.model.diffusion_model = str(self.model_dir)
        defaults = ed_nerf_trainer()
        costs: dict[str, float] = {"eval_s": float("nan"), "save_s": float("nan")}
        cost_errors: dict[str, str] = {}

        def extra_costs(trainer) -> None:
            # What the default run adds: evaluations every steps_per_eval_* and checkpoints every steps_per_save
            # (measured while nerfstudio's writers are still set up, as in the loop).
            for label, fn in (
                ("eval_s", lambda: trainer.eval_iteration(defaults.steps_per_eval_batch)),
                ("save_s", lambda: trainer.save_checkpoint(total)),
            ):
                try:
                    fn()  # the first call pays lazy initialisation (metrics, the VAE decoder's kernels)
                    self.clock.sync()
                    t0 = time.perf_counter()
                    fn()
                    self.clock.sync()
                    costs[label] = time.perf_counter() - t0
                except Exception as exc:  # the training itself is measured; keep it and the edit going
                    cost_errors[label] = f"{type(exc).__name__}: {exc}"[:500]
                    traceback.print_exc()

        run = self._run(config, skip=self.train_warmup, after=extra_costs)
        trainer = run.pop("trainer")
        self.train_run = config.get_base_dir()
        evals = sum(
            1
            for s in range(1, TRAIN_STEPS)
            if s % defaults.steps_per_eval_batch == 0 or s % defaults.steps_per_eval_image == 0
        )
        saves = sum(1 for s in range(1, TRAIN_STEPS) if s % defaults.steps_per_save == 0) + 1  # + the final one
        mean_s = (run["step_ms"] or {}).get("mean", float("nan")) / 1e3
        estimate = run["setup_s"] + run["loop_s"] + (TRAIN_STEPS - total) * mean_s
        estimate += evals * costs["eval_s"] + saves * costs["save_s"]
        del trainer
        run.update(
            config="registered ed-nerf config" + (" + small-scene preset" if self.tiny else ""),
            default_steps=TRAIN_STEPS,
            implementation=self._implementation(config),
            steps_per_s=r3(1e3 / run["step_ms"]["mean"]) if run["step_ms"] else None,
            eval_iteration_s=r3(costs["eval_s"]),
            checkpoint_s=r3(costs["save_s"]),
            default_run_evals=evals,
            default_run_checkpoints=saves,
            extrapolated_default_s=r3(estimate),
            extra_cost_errors=cost_errors,
            extrapolation=(
                f"setup + the measured {total} steps + {TRAIN_STEPS - total} x mean step + {evals} evaluations + "
                f"{saves} checkpoints. The proposal networks update every step early in training and less often "
                f"later (nerfacto's schedule), so later steps are cheaper: this is an upper estimate."
            ),
        )
        return run

    def train_variant(self, options: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
        """A short ed-nerf run with other model options (e.g. nerfstudio's own torch hash grid), for comparison
        with the main training measurement on the same card in the same process."""
        from ednerf_ns.configs import ed_nerf_trainer
        from ednerf_ns.presets import apply_small_scene_preset

        config = ed_nerf_trainer()
        if self.tiny:
            apply_small_scene_preset(config)
        self._prepare(config, "train-variant", warmup + steps)
        config.pipeline.model.diffusion_model = str(self.model_dir)
        apply_options(config, options)
        run = self._run(config, skip=warmup)
        run["step_graph"] = step_graph_stats(run.pop("trainer"))
        run.update(options=options, steps_per_s=r3(1e3 / run["step_ms"]["mean"]) if run["step_ms"] else None)
        return run

    def hash_grid(self) -> dict[str, Any]:
        """Forward + backward (table gradient) of the three hash grids of a step at the scene's latent size: the
        torch kernels (ednerf_ns.accel.hashgrid) against the fused Triton kernels, with their relative difference."""
        from nerfstudio.field_components.encodings import HashEncoding

        from ednerf_ns.accel.hashgrid import accelerate_hash_grids

        rays = (self.resolution // 8) ** 2
        grids = {  # nerfacto's proposal networks and the ed-nerf field, with the samples per ray of each
            "proposal_0": (dict(num_levels=5, min_res=16, max_res=128), 256),
            "proposal_1": (dict(num_levels=5, min_res=16, max_res=256), 96),
            "field": (dict(num_levels=16, min_res=16, max_res=512), 48),
        }
        out: dict[str, Any] = {"rays": rays}
        for name, (args, per_ray) in grids.items():
            torch.manual_seed(self.cfg.seed)
            enc = HashEncoding(**args, log2_hashmap_size=17, features_per_level=2, implementation="torch")
            accelerate_hash_grids(enc, triton=False)
            enc = enc.to(self.device)
            # samples along rays, as the sampler makes them (consecutive rows close together): the backward's
            # cost depends on how often neighbouring samples share cells
            origins = 0.2 + 0.6 * torch.rand(rays, 1, 3, device=self.device)
            directions = torch.nn.functional.normalize(torch.randn(rays, 1, 3, device=self.device), dim=-1) * 0.3
            t = torch.rand(rays, per_ray, 1, device=self.device).sort(dim=1).values
            x = (origins + directions * t).reshape(-1, 3).clamp(0, 1)
            upstream = torch.randn(rays * per_ray, enc.get_out_dim(), device=self.device)
            row: dict[str, Any] = {"samples": rays * per_ray, "levels": args["num_levels"]}
            results = {}
            for kernel in ("torch", "triton"):
                enc.use_triton = kernel == "triton"

                def step(enc=enc, x=x, upstream=upstream):
                    enc.hash_table.grad = None
                    encoded = enc(x)
                    encoded.backward(upstream)
                    return encoded

                try:
                    encoded = step()
                    results[kernel] = (encoded.detach().clone(), enc.hash_table.grad.clone())
                    row[f"{kernel}_ms"] = self._time_calls(step, warmup=2, iters=10)
                except Exception as exc:
                    row[f"{kernel}_error"] = f"{type(exc).__name__}: {exc}"[:500]
            if len(results) == 2:
                (a, ga), (b, gb) = results["torch"], results["triton"]
                row["forward_rel_diff"] = float(f"{float((a - b).norm() / a.norm()):.3e}")
                row["grad_rel_diff"] = float(f"{float((ga - gb).norm() / ga.norm()):.3e}")
                row["speedup"] = r3(row["torch_ms"]["median"] / row["triton_ms"]["median"])
            out[name] = row
            del enc, x, upstream, results
            release_memory()
        return out

    def edit(self, name: str, options: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
        from ednerf_ns.configs import EDIT_STEPS, ed_nerf_edit_trainer

        assert self.train_run is not None, "the edit needs the training run"
        config = ed_nerf_edit_trainer()
        self._prepare(config, f"edit-{name}", steps)
        config.load_dir = self.train_run / "nerfstudio_models"
        config.pipeline.model.prompt = TARGET_PROMPT
        config.pipeline.model.source_prompt = SOURCE_PROMPT
        config.pipeline.model.mask_source = "dataset"  # the procedural scene's object masks: the masked edit
        apply_options(config, options)
        run = self._run(config, skip=warmup)
        trainer = run.pop("trainer")
        runner = trainer.pipeline.model.diffusion.unet_runner
        run["unet_runner"] = dataclasses.asdict(runner.stats)
        run["unet_acceleration"] = dataclasses.asdict(runner.options)
        run["step_graph"] = step_graph_stats(trainer)
        run["options"] = options
        run["config"] = "registered ed-nerf-edit config, dataset masks" + (f", {options}" if options else "")
        run["edit_masks"] = "edit_mask" in trainer.pipeline.datamanager.cached_train[0]
        if run["step_ms"]:
            mean_s = run["step_ms"]["mean"] / 1e3
            run["default_steps"] = EDIT_STEPS
            run["extrapolated_default_s"] = r3(run["setup_s"] + run["loop_s"] + (EDIT_STEPS - steps) * mean_s)
            if steps >= EDIT_STEPS:
                run["measured_default_s"] = r3(run["setup_s"] + run["loop_s"])
        del trainer
        return run

    # ------------------------------------------------------------------ helpers
    def _prepare(self, config, name: str, steps: int) -> None:
        """The registered method config with this run's data, device, steps and folders; no viewer."""
        config.machine.device_type = self.device.type
        config.machine.seed = self.cfg.seed
        config.vis = "tensorboard"  # no viewer server; nerfstudio's tensorboard logging stays on
        config.logging.local_writer.enable = False  # no per-step console table in the log
        config.max_num_iterations = steps
        config.output_dir = self.workdir / "runs"
        config.experiment_name = name
        config.pipeline.datamanager.data = self.data_dir
        config.pipeline.datamanager.cache_dir = self.workdir / "cache"

    def _run(self, config, skip: int, after: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Set up and train `config` as `ns-train` does, with the phases of every step marked; then `after(trainer)`.

        Host synchronisations are listed over `sync_window` steps at the end of the warm-up (after step 0, which
        captures the CUDA graph), so the debug mode's own cost stays out of the measured steps.
        """
        from ednerf_ns.tools.runs import reset_nerfstudio_writers, start_run

        start_run(config)
        sync_start = max(1, skip - self.cfg.sync_window)
        recorder = StepRecorder(self.clock, sync_start, self.cfg.sync_window, memory_reset_step=skip)
        if self.clock.cuda:
            torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated() if self.clock.cuda else 0
        t0 = time.perf_counter()
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        self.clock.sync()
        setup_s = time.perf_counter() - t0
        pipeline = trainer.pipeline
        model = pipeline.model
        recorder.instrument(trainer, "train_iteration", "iteration", begins_step=True)
        recorder.instrument(trainer.optimizers, "zero_grad_some", "zero_grad")
        recorder.instrument(trainer.optimizers, "optimizer_scaler_step_some", "optimizer")
        recorder.instrument(trainer.optimizers, "scheduler_step_all", "scheduler")
        recorder.instrument(pipeline, "get_train_loss_dict", "forward")
        recorder.instrument(pipeline.datamanager, "next_train", "data")
        recorder.instrument(model, "forward", "render")
        recorder.instrument(model, "get_metrics_dict", "metrics")
        recorder.instrument(model, "get_loss_dict", "loss")
        recorder.instrument(model.diffusion, "predict_noise", "unet")
        if getattr(trainer, "step_graph", None) is not None:
            # forward + backward of a step, whether replayed from the graph, captured or run eagerly
            recorder.instrument(trainer.step_graph, "run", "step_graph")
        try:
            with warnings.catch_warnings(record=True) as caught:
                # Every sync-debug warning counts; other warnings keep their filters (once per place).
                warnings.filterwarnings("always", message=".*synchroniz")
                t0 = time.perf_counter()
                trainer.train()
                self.clock.sync()
                loop_s = time.perf_counter() - t0
            recorder.remove()
            memory = self._memory(resident, recorder.peak_before_reset)
            if after is not None:
                after(trainer)
        finally:
            recorder.remove()
            reset_nerfstudio_writers()
        out = recorder.summary(skip)
        first = recorder.summary(0)["phases_ms"].get("iteration")
        out.update(
            trainer=trainer,
            setup_s=r3(setup_s),
            loop_s=r3(loop_s),
            steps_run=config.max_num_iterations,
            warmup_steps=skip,
            first_step_ms=r3(self.clock.ms(*recorder.steps[0]["marks"]["iteration"][0])) if recorder.steps else None,
            iteration_ms_all_steps=first,
            host_syncs=self._syncs(caught, recorder),
            **memory,
        )
        return out

    def _memory(self, resident: int, peak_warmup: int) -> dict[str, float | None]:
        """Peak allocated memory of the run (setup and every step) and of the steps after the warm-up; both include
        what was resident before the run (the diffusion model's weights)."""
        if not self.clock.cuda:
            return {}
        steady = torch.cuda.max_memory_allocated()
        peak = max(steady, peak_warmup)
        return {
            "peak_memory_gb": r3(peak / 1e9),
            "peak_memory_after_warmup_gb": r3(steady / 1e9),
            "peak_reserved_gb": r3(torch.cuda.max_memory_reserved() / 1e9),
            "resident_before_gb": r3(resident / 1e9),
            "peak_above_resident_gb": r3((peak - resident) / 1e9),
        }

    def _syncs(self, caught: list, recorder: StepRecorder) -> dict[str, Any]:
        """Host synchronisations per step, by source line, from the sync debug mode's warnings."""
        if not self.clock.cuda:
            return {"note": "not measured off CUDA"}
        sites: Counter[str] = Counter()
        for w in caught:
            if "synchroniz" not in str(w.message):
                continue
            line = linecache.getline(w.filename, w.lineno).strip()
            sites[f"{_short_path(w.filename)}:{w.lineno}: {line[:120]}"] += 1
        steps = max(1, min(self.cfg.sync_window, len(recorder.steps) - recorder.sync_start))
        return {
            "steps_observed": steps,
            "per_step": r3(sum(sites.values()) / steps),
            "sites_per_step": {k: r3(v / steps) for k, v in sites.most_common()},
        }

    def _implementation(self, config) -> str:
        return str(config.pipeline.model.implementation)

    def _time_calls(self, fn: Callable[[], Any], warmup: int, iters: int) -> dict[str, float] | None:
        """Per-call time (ms) of back-to-back calls of `fn` after `warmup` calls."""
        for _ in range(warmup):
            fn()
        marks = [self.clock.mark()]
        for _ in range(iters):
            fn()
            marks.append(self.clock.mark())
        self.clock.sync()
        return stats([self.clock.ms(a, b) for a, b in zip(marks, marks[1:], strict=False)])

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class OutputBytes(TorchDispatchMode):
    """Bytes of the new tensors every op writes (views and in-place results excluded): the intermediate traffic
    of an unfused, eager forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False):
            return out
        leaves = pytree.tree_leaves((args, kwargs))
        inputs = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, Tensor)}
        for t in pytree.tree_leaves(out):
            if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.bytes += t.numel() * t.element_size()
        return out


def flops_on_meta(unet_config: dict, sample: tuple[int, ...], text: tuple[int, ...]) -> int:
    """FLOPs of one UNet call counted on the meta device: shapes only, no memory, no compute, so it runs anywhere
    in a second. There attention runs as explicit matrix products, which the counter always sees (a fused attention
    kernel may be missing from its tables: e.g. the CPU's flash kernel)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config).half()
        x = torch.empty(*sample, dtype=torch.float16)
        t = torch.zeros(sample[0], dtype=torch.long)
        c = torch.empty(*text, dtype=torch.float16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=c, return_dict=False)
    return int(counter.get_total_flops())


def build_sd15(out: Path, device: torch.device, seed: int) -> dict[str, Any]:
    """Random-weight SD 1.5 (UNet, VAE, CLIP text encoder) in diffusers layout at `out`, fp16.

    The modules are created on `device` (initialising 1 B parameters on a GPU takes a second, on a CPU much
    longer); the tokenizer is the tiny model's (its ids are valid for the 49408-token text encoder).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ednerf_ns.demo.tiny_sd import TinySD, build_tokenizer, save_model, scheduler_config

    t0 = time.perf_counter()
    tokenizer = build_tokenizer(out)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET).half()
        vae = AutoencoderKL(**SD15_VAE).half()
        text = CLIPTextConfig(
            **SD15_TEXT,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
        text_encoder = CLIPTextModel(text).half()
    if device.type == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scheduler = DDPMScheduler(**scheduler_config())
    models = TinySD(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
    save_model(models, out, dtype=torch.float16)
    save_s = time.perf_counter() - t0
    del models, unet, vae, text_encoder
    release_memory()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"build_s": r3(build_s), "save_s": r3(save_s), "folder_bytes": size}


def apply_options(config, options: dict[str, Any]) -> None:
    """Model options by name; `trainer.<name>` sets a trainer option (e.g. trainer.mixed_precision)."""
    for key, value in options.items():
        if key.startswith("trainer."):
            setattr(config, key.removeprefix("trainer."), value)
        else:
            setattr(config.pipeline.model, key, value)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def log(message: str) -> None:
    print(f"ednerf-bench: {message}", file=sys.stderr, flush=True)


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "ednerf_ns/"):
        if marker in path:
            return (marker if marker == "ednerf_ns/" else "") + path.split(marker, 1)[1]
    return path


def _command_line() -> str:
    program = Path(sys.argv[0]).name
    if program == "gpu.py":  # python -m ednerf_ns.bench.gpu
        program = "python -m ednerf_ns.bench.gpu"
    elif program == "ednerf-bench":
        program = "ednerf-bench gpu"
    return " ".join([program, *sys.argv[1:]])


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() or None
    except Exception:
        return None


def _nvidia_smi(field: str) -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None
    except Exception:
        return None


def step_graph_stats(trainer) -> dict[str, Any] | None:
    """What the trainer's step graph did (None when steps ran as nerfstudio's eager loop)."""
    graph = getattr(trainer, "step_graph", None)
    return dataclasses.asdict(graph.stats) if graph is not None else None


def combine_training(result: dict[str, Any]) -> dict[str, Any] | None:
    """The default ed-nerf run's time from the two measured phases: steps during the proposal-weight anneal run
    eagerly ("train"), later steps replay a CUDA graph ("train_after_anneal")."""
    from ednerf_ns.configs import TRAIN_STEPS, ed_nerf_trainer

    train, after = result.get("train") or {}, result.get("train_after_anneal") or {}
    eager_ms = (train.get("step_ms") or {}).get("mean")
    graph_ms = (after.get("step_ms") or {}).get("mean")
    if not eager_ms or not graph_ms:
        return None
    anneal = int(ed_nerf_trainer().pipeline.model.proposal_weights_anneal_max_num_iters)
    measured = int(train.get("steps_run") or 0)
    evals, saves = train.get("default_run_evals") or 0, train.get("default_run_checkpoints") or 0
    estimate = train["setup_s"] + train["loop_s"] + max(0, anneal - measured) * eager_ms / 1e3
    estimate += (TRAIN_STEPS - max(anneal, measured)) * graph_ms / 1e3
    estimate += evals * (train.get("eval_iteration_s") or 0.0) + saves * (train.get("checkpoint_s") or 0.0)
    return {
        "extrapolated_default_s": r3(estimate),
        "eager_step_ms": r3(eager_ms),
        "graph_step_ms": r3(graph_ms),
        "anneal_steps": anneal,
        "how": f"setup + the measured {measured} steps + the rest of the {anneal} anneal steps at the eager mean + "
        f"{TRAIN_STEPS - max(anneal, measured)} steps at the mean after the anneal + evaluations + checkpoints",
    }


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets next to what was measured (meaningful for sd15 on an H100)."""
    edit = result.get("edit") or {}
    train = result.get("train") or {}
    step = (edit.get("step_ms") or {}).get("median")
    default_s = edit.get("measured_default_s", edit.get("extrapolated_default_s"))
    rows = {
        "edit_step_ms": step,
        "edit_peak_memory_gb": edit.get("peak_memory_gb"),
        "edit_default_s": default_s,
        "train_default_s": (result.get("train_default_estimate") or {}).get(
            "extrapolated_default_s", train.get("extrapolated_default_s")
        ),
    }
    return {
        name: {"measured": value, "target": TARGETS[name], "met": None if value is None else value <= TARGETS[name]}
        for name, value in rows.items()
    }


def main(config: GpuBenchConfig) -> dict:
    """Run the benchmark; print the result as one JSON object (the last line of stdout) and return it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    bench = Bench(config)
    threads = torch.get_num_threads()
    if bench.tiny and not bench.clock.cuda:
        # The tiny model's ops are too small to gain from intra-op threads, and on a shared CPU spinning threads
        # slow them down many times over (seen: 3.9 s vs 0.05 s per UNet call): one thread keeps the smoke run fast.
        torch.set_num_threads(1)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as `ns-train` sets it (nerfstudio/scripts/train.py)
    bench.result["settings"] = {"torch_threads": torch.get_num_threads(), "cudnn_benchmark": True}
    try:
        bench.section("environment", bench.environment)
        bench.section("ceilings", bench.ceilings)
        if bench.section("model", bench.model):
            bench.section("unet", bench.unet)
            bench.section("floors", bench.floors)
            bench.section("dataset", bench.dataset)
            if bench.clock.cuda:
                bench.section("hash_grid", bench.hash_grid)
            trained = bench.data_dir is not None and bench.section("train", bench.train)
            if trained and config.train_variants:
                # ed-nerf's first 1000 steps anneal the proposal weights, which changes the step every step: they
                # run eagerly (measured by "train"). The rest replays a CUDA graph: measured here with the anneal
                # finished from the start, then both combined into the default run's estimate.
                steps = max(2, bench.train_steps)
                bench.section(
                    "train_after_anneal",
                    lambda: bench.train_variant(
                        {"proposal_weights_anneal_max_num_iters": 1}, steps, bench.train_warmup
                    ),
                )
                bench.result["train_default_estimate"] = combine_training(bench.result)
            if trained:
                from ednerf_ns.configs import EDIT_STEPS

                steps = EDIT_STEPS if bench.full_edit else bench.edit_warmup + bench.edit_steps
                bench.section("edit", lambda: bench.edit("default", {}, steps, bench.edit_warmup))
                # Before/after of this project's speed-ups, each measured in this process on this card.
                variants = {
                    "refinement_bf16": {"refinement_bf16": True},
                    "tf32": {"tf32_matmul": True},
                    "no_triton_hash_grid": {"triton_hash_grid": False},
                    "no_step_graph": {"step_cuda_graph": False},
                    "no_step_graph_no_triton": {"step_cuda_graph": False, "triton_hash_grid": False},
                    "no_step_graph_no_triton_eager_unet": {
                        "step_cuda_graph": False,
                        "triton_hash_grid": False,
                        "unet_cuda_graph": False,
                    },
                }
                if config.edit_variants:
                    results: dict[str, Any] = {}
                    bench.result["edit_variants"] = results
                    short = bench.edit_warmup + bench.edit_steps
                    for name, options in variants.items():
                        setup_s = (bench.result.get("edit") or {}).get("setup_s", 10.0)
                        if not bench.affordable(f"edit_variants.{name}", setup_s + short * 0.1):
                            continue
                        results[name] = None

                        def run(name=name, options=options) -> None:
                            results[name] = bench.edit(name, options, short, bench.edit_warmup)

                        bench.section(f"edit_variant_{name}", run)
            if config.compile and bench.clock.cuda and bench.affordable("unet_compile", 150.0):
                bench.section("unet_compile", lambda: bench.unet(compiled=True))
        bench.result["targets"] = targets(bench.result)
        bench.result["total_s"] = r3(bench.elapsed())
        bench.flush()
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        bench.close()
    print(json.dumps(bench.result, default=str), flush=True)
    return bench.result


def _parse_args(argv: list[str]) -> GpuBenchConfig:
    """`--name value` / `--name` / `--no-name` for the config's fields: tyro when installed, else argparse."""
    try:
        import tyro

        return tyro.cli(GpuBenchConfig, args=argv)
    except ImportError:
        pass
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ednerf_ns.bench.gpu", description=GpuBenchConfig.__doc__)
    for f in dataclasses.fields(GpuBenchConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default)
        elif "Path" in str(f.type):
            parser.add_argument(flag, dest=f.name, type=Path, default=f.default)
        elif "int" in str(f.type):
            parser.add_argument(flag, dest=f.name, type=int, default=f.default)
        elif "float" in str(f.type):
            parser.add_argument(flag, dest=f.name, type=float, default=f.default)
        else:
            parser.add_argument(flag, dest=f.name, default=f.default)
    return GpuBenchConfig(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(_parse_args(sys.argv[1:]))
