"""The sections on the diffusion model: loading it, timing each UNet variant, and its FLOP and byte floors."""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ednerf_ns.accel.unet_graph import UNetAcceleration, UNetRunner
from ednerf_ns.bench.gpu.config import SOURCE_PROMPT, TARGET_PROMPT
from ednerf_ns.bench.gpu.core import BenchCore
from ednerf_ns.bench.gpu.sd15 import SD15_UNET, OutputBytes, build_sd15, flops_on_meta
from ednerf_ns.bench.gpu.timing import r3, release_memory, time_calls


class UnetSections(BenchCore):
    """`model`, `unet` and `floors` (and the UNet batch they share)."""

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
                timing = time_calls(
                    self.clock, lambda runner=runner: runner(x, t, text), warmup=2, iters=self.unet_iters
                )
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
