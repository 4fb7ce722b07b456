"""Where an edit step's time goes on the GPU, and what each candidate lever changes (same card, one process).

Runs on a CUDA machine at Stable Diffusion 1.5 size with the model, scene and instrumented nerfstudio loop of
`ednerf-bench gpu` (it reuses its `Bench`):

1. short `ed-nerf-edit` runs in several variants (step time by CUDA events, peak memory);
2. torch.profiler tables (GPU time per kernel) of a few steps of the edit, replayed from the step graph and eager.

    python benchmarks/profile_gpu.py --out results   # prints a JSON summary, writes profile_*.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

EDIT_VARIANTS: dict[str, dict] = {
    "default": {},
    "proposals_every_step": {"proposal_update_schedule": False},
    "distortion_computed": {"distortion_loss_mult": 1e-9},
    "refinement_bf16": {"refinement_bf16": True},
    "tf32": {"tf32_matmul": True},
    "no_step_graph": {"step_cuda_graph": False},
}


def short(run: dict) -> dict:
    phases = run.get("phases_ms") or {}
    keep = ("iteration", "step_graph", "render", "unet", "backward", "forward", "optimizer", "loss_without_unet")
    out = {k: phases[k]["median"] for k in keep if k in phases}
    out["iteration_mean"] = (phases.get("iteration") or {}).get("mean")
    if run.get("loop_s") and run.get("steps_run"):  # host wall clock per step, warm-up included
        out["loop_ms_per_step"] = round(1e3 * run["loop_s"] / run["steps_run"], 2)
    syncs = run.get("host_syncs") or {}
    out["host_syncs_per_step"] = syncs.get("per_step")
    for key in ("peak_memory_gb", "peak_memory_after_warmup_gb", "setup_s", "loop_s"):
        if key in run:
            out[key] = run[key]
    return out


def profile_steps(bench, kind: str, options: dict, out: Path, wait: int = 12, active: int = 5) -> str:
    """torch.profiler over `active` steps of a run (after `wait` steps), table sorted by CUDA time."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from ednerf_ns.bench.gpu import apply_options
    from ednerf_ns.configs import ed_nerf_edit_trainer, ed_nerf_trainer
    from ednerf_ns.tools.runs import reset_nerfstudio_writers, start_run

    config = ed_nerf_edit_trainer() if kind == "edit" else ed_nerf_trainer()
    bench.prepare_run(config, f"profile-{kind}", wait + active + 2)
    config.pipeline.model.diffusion_model = str(bench.model_dir)
    if kind == "edit":
        from ednerf_ns.bench.gpu import SOURCE_PROMPT, TARGET_PROMPT

        config.load_dir = bench.train_run / "nerfstudio_models"
        config.pipeline.model.prompt = TARGET_PROMPT
        config.pipeline.model.source_prompt = SOURCE_PROMPT
    apply_options(config, options)
    start_run(config)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    prof = profile(
        activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
        schedule=schedule(wait=wait, warmup=1, active=active, repeat=1),
    )
    original = trainer.train_iteration

    def step(i):
        result = original(i)
        prof.step()
        return result

    trainer.train_iteration = step
    try:
        with prof:
            trainer.train()
    finally:
        reset_nerfstudio_writers()
    averages = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            table = averages.table(sort_by=key, row_limit=45, max_name_column_width=90)
            break
        except Exception:  # older/newer torch name the column differently
            table = ""
    label = "default" if not options else "_".join(options)
    name = f"profile_{kind}_{label}.txt"
    (out / name).write_text(table)
    del trainer
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("profile-out"))
    parser.add_argument("--budget-s", type=float, default=300)
    parser.add_argument("--variants", default=",".join(EDIT_VARIANTS), help="comma-separated, or 'none'")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    from ednerf_ns.bench.gpu import Bench, GpuBenchConfig

    cfg = GpuBenchConfig(
        mode="sd15",
        output=out / "profile_bench.json",
        train_steps=40,
        train_warmup=10,
        edit_steps=40,
        edit_warmup=10,
        full_edit=False,
        edit_variants=False,
        train_variants=False,
        time_budget_s=args.budget_s,
    )
    torch.backends.cudnn.benchmark = True
    bench = Bench(cfg)
    summary: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    t0 = time.time()
    bench.section("model", bench.model)
    bench.section("dataset", bench.dataset)
    bench.section("train", bench.train)

    def run_variant(name: str, options: dict) -> None:
        result = bench.edit(name, options, cfg.edit_warmup + cfg.edit_steps, cfg.edit_warmup)
        summary.setdefault("edit", {})[name] = short(result)
        print(json.dumps({"edit": {name: summary["edit"][name]}}), flush=True)

    wanted = [] if args.variants == "none" else args.variants.split(",")
    for name, options in EDIT_VARIANTS.items():
        if name in wanted and bench.affordable(f"edit_{name}", 20):
            bench.section(f"edit_{name}", lambda n=name, o=options: run_variant(n, o))
    for label, options in (("graph", {}), ("eager", {"step_cuda_graph": False})):
        if bench.affordable(f"profile_{label}", 30):
            bench.section(
                f"profile_{label}", lambda o=options: print(profile_steps(bench, "edit", o, out)[:8000], flush=True)
            )
    summary["errors"] = bench.result["errors"]
    summary["total_s"] = round(time.time() - t0, 1)
    (out / "profile_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    bench.close()


if __name__ == "__main__":
    sys.exit(main())
