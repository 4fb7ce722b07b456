"""What holds GPU memory at the peak of an edit step (SD 1.5 size): allocations live at the peak, by source line.

Reuses `ednerf-bench gpu`'s model, scene and short training run, then records the CUDA caching allocator's
history over a few steady edit steps and replays it to find the peak and what was live then.

    python benchmarks/memory_gpu.py --out results   # on a CUDA machine; prints JSON, writes memory_peak.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch


def site(frames: list[dict]) -> str:
    """The innermost frame in project or nerfstudio code (else the innermost Python frame)."""
    for frame in frames:
        name = frame.get("filename", "")
        if "ednerf_ns" in name or "nerfstudio" in name or "diffusers" in name:
            short = name.split("site-packages/")[-1].split("/work/")[-1]
            return f"{short}:{frame.get('line')} {frame.get('name')}"
    for frame in frames:
        if frame.get("filename", "").endswith(".py"):
            return f"{frame['filename'].split('/')[-1]}:{frame.get('line')} {frame.get('name')}"
    return "?"


MARKER_BYTES = 512 * 1531  # an allocation of this size marks the start of the measured steps


def peak_breakdown(snapshot: dict, baseline: int) -> dict:
    """Replay the allocator trace: what is live when the measured steps start, and at their peak."""
    live: dict[int, tuple[int, str]] = {}
    total, peak, at_peak, at_start = 0, 0, {}, None
    for event in snapshot["device_traces"][0]:
        action = event["action"]
        if action == "alloc" and event["size"] == MARKER_BYTES and at_start is None:
            at_start = dict(live)
            total, peak = 0, 0  # the peak of the measured steps, above what was live when they started
        elif action == "alloc":
            live[event["addr"]] = (event["size"], site(event.get("frames", [])))
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif action in ("free_completed",) and event["addr"] in live:
            total -= live.pop(event["addr"])[0]

    def by_site(allocations: dict) -> dict:
        sizes: Counter[str] = Counter()
        for size, where in allocations.values():
            sizes[where] += size
        return {k: round(v / 1e9, 3) for k, v in sizes.most_common(25)}

    return {
        "allocated_before_setup_gb": round(baseline / 1e9, 3),
        "live_at_step_30_gb": round(sum(s for s, _ in (at_start or {}).values()) / 1e9, 3),
        "live_at_step_30_by_site_gb": by_site(at_start or {}),
        "peak_of_steps_above_step_30_gb": round(peak / 1e9, 3),
        "live_at_peak_by_site_gb": by_site({k: v for k, v in at_peak.items() if k not in (at_start or {})}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("memory-out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from ednerf_ns.bench.gpu import SOURCE_PROMPT, TARGET_PROMPT, Bench, GpuBenchConfig
    from ednerf_ns.configs import ed_nerf_edit_trainer
    from ednerf_ns.tools.runs import reset_nerfstudio_writers, start_run

    cfg = GpuBenchConfig(mode="sd15", train_steps=10, train_warmup=2, full_edit=False, edit_variants=False)
    torch.backends.cudnn.benchmark = True
    bench = Bench(cfg)
    for name in ("model", "dataset", "train"):
        bench.section(name, getattr(bench, name))
    results = {}
    for label, options in (("default", {}),):
        config = ed_nerf_edit_trainer()
        bench.prepare_run(config, f"memory-{label}", 40)
        config.pipeline.model.diffusion_model = str(bench.model_dir)
        config.load_dir = bench.train_run / "nerfstudio_models"
        config.pipeline.model.prompt = TARGET_PROMPT
        config.pipeline.model.source_prompt = SOURCE_PROMPT
        for key, value in options.items():
            setattr(config.pipeline.model, key, value)
        start_run(config)
        torch.cuda.synchronize()
        state = {"baseline": torch.cuda.memory_allocated()}
        torch.cuda.memory._record_memory_history(max_entries=2_000_000)
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        original = trainer.train_iteration

        def step(i, original=original):
            if i == 30:  # steady state: every view's rays cached, the UNet graph captured
                marker = torch.empty(MARKER_BYTES, dtype=torch.uint8, device="cuda")
                del marker
            return original(i)

        trainer.train_iteration = step
        trainer.train()
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        results[label] = peak_breakdown(snapshot, state["baseline"])
        results[label]["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
        del trainer, snapshot
        reset_nerfstudio_writers()
        torch.cuda.empty_cache()
    (args.out / "memory_peak.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=1))
    bench.close()


if __name__ == "__main__":
    main()
