"""The sections that describe the machine: software versions, the card, and its measured ceilings."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from ednerf_ns.bench.gpu.core import BenchCore
from ednerf_ns.bench.gpu.timing import r3, time_calls


class EnvironmentSections(BenchCore):
    """`environment` and `ceilings`."""

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
        ms = time_calls(self.clock, lambda: a @ b, warmup=3, iters=10)
        tflops = 2 * n**3 / (ms["median"] / 1e3) / 1e12
        x = torch.empty(1 << 29, device=self.device, dtype=torch.float16)  # 1 GiB
        y = torch.empty_like(x)
        copy = time_calls(self.clock, lambda: y.copy_(x), warmup=2, iters=10)
        gbps = 2 * x.numel() * x.element_size() / (copy["median"] / 1e3) / 1e9  # bytes read + written
        return {"matmul_fp16_tflops": r3(tflops), "copy_gb_per_s": r3(gbps), "matmul_n": n, "copy_bytes": 1 << 30}


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[3]
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
