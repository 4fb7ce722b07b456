"""`Bench` (every section) and `main`: the order of the sections, the time budget, the targets."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ednerf_ns.bench.gpu.config import TARGETS, GpuBenchConfig
from ednerf_ns.bench.gpu.environment import EnvironmentSections
from ednerf_ns.bench.gpu.nerf import NerfSections, combine_training
from ednerf_ns.bench.gpu.timing import r3
from ednerf_ns.bench.gpu.unet import UnetSections


class Bench(EnvironmentSections, UnetSections, NerfSections):
    """One benchmark run: settings, results (JSON-ready), the state shared by its sections, and the sections."""


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
