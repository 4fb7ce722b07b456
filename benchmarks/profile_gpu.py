"""Where an edit step's and a training step's time goes on the GPU, and what each lever changes.

Runs on a CUDA machine at Stable Diffusion 1.5 size with the same model, scene and instrumented nerfstudio loop as
`ednerf-bench gpu` (it reuses its `Bench`), in one process, so every before/after pair shares the card:

1. short `ed-nerf-edit` and `ed-nerf` runs in several variants (step time by CUDA events, peak memory);
2. torch.profiler tables (CUDA time per kernel) of a few steps of the default edit and training;
3. the hash-grid encodings alone, forward + backward, at the sizes of one step.

    OUT=results bash benchmarks/run_gpu.sh  # runs the benchmark; for this script instead:
    python benchmarks/profile_gpu.py --out results   # prints a JSON summary, writes profile_*.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

# "before" of the field fix: nerfstudio's get_density marks the sample positions as requiring a gradient.
BEFORE_FIELD_FIX = "nerfacto_get_density"

FEWER = {"num_proposal_samples_per_ray": (128, 64), "num_nerf_samples_per_ray": 32}
EVERY_5 = {"proposal_update_every": 5, "proposal_warmup": 1}
FP32 = {"trainer.mixed_precision": False}  # no autocast, no GradScaler (whose checks synchronise every step)
EDIT_VARIANTS: dict[str, dict] = {
    "before_field_fix": {BEFORE_FIELD_FIX: True},
    "default": {},
    "no_mixed_precision": FP32,
    "proposals_every_5": EVERY_5,
    "fewer_samples": FEWER,
    "fewer_samples+no_mixed_precision": {**FEWER, **FP32},
    "fewer_samples+proposals_every_5+no_mixed_precision": {**FEWER, **EVERY_5, **FP32},
}
TRAIN_VARIANTS: dict[str, dict] = {
    "default": {},
    "no_mixed_precision": FP32,
    "proposals_every_5": EVERY_5,
    "proposals_every_5+no_mixed_precision": {**EVERY_5, **FP32},
}


def patched_options(options: dict):
    """Split off the pseudo-option that swaps the field's get_density back to nerfstudio's."""
    from nerfstudio.fields.nerfacto_field import NerfactoField

    from ednerf_ns.field import LatentField

    options = dict(options)
    before = options.pop(BEFORE_FIELD_FIX, False)
    original = LatentField.get_density

    def apply() -> None:
        if before:
            LatentField.get_density = NerfactoField.get_density  # type: ignore[method-assign]

    def undo() -> None:
        LatentField.get_density = original  # type: ignore[method-assign]

    return options, apply, undo


def short(run: dict) -> dict:
    phases = run.get("phases_ms") or {}
    keep = ("iteration", "render", "unet", "backward", "forward", "optimizer", "loss_without_unet")
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
    from ednerf_ns.runs import _reset_nerfstudio_writers, start_run

    config = ed_nerf_edit_trainer() if kind == "edit" else ed_nerf_trainer()
    bench._prepare(config, f"profile-{kind}", wait + active + 2)
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
        _reset_nerfstudio_writers()
    averages = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            table = averages.table(sort_by=key, row_limit=45, max_name_column_width=90)
            break
        except Exception:  # older/newer torch name the column differently
            table = ""
    label = "default" if not options else "_".join(k.removeprefix("trainer.") for k in options)
    name = f"profile_{kind}_{label}.txt"
    (out / name).write_text(table)
    del trainer
    return table


def hash_grid_micro(device: torch.device) -> dict:
    """Forward + backward of the torch hash encodings alone at one step's sizes (CUDA events, median of 10)."""
    from nerfstudio.field_components.encodings import HashEncoding

    from ednerf_ns.hashgrid import FastHashEncoding

    results = {}
    cases = {  # (samples, levels, max_res): the first proposal network, the field
        "proposal_0": (4096 * 256, 5, 128),
        "field": (4096 * 48, 16, 512),
    }
    for case, (n, levels, max_res) in cases.items():
        for impl in ("nerfstudio", "fast"):
            for position_grad in (False, True):
                enc = HashEncoding(num_levels=levels, max_res=max_res, log2_hashmap_size=17, implementation="torch")
                if impl == "fast":
                    enc.__class__ = FastHashEncoding
                enc = enc.to(device)
                x = torch.rand(n, 3, device=device, requires_grad=position_grad)
                times = []
                for i in range(13):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    enc(x).square().sum().backward()
                    end.record()
                    torch.cuda.synchronize()
                    if i >= 3:
                        times.append(start.elapsed_time(end))
                times.sort()
                results[f"{case}/{impl}/{'position_grad' if position_grad else 'table_grad'}"] = round(
                    times[len(times) // 2], 3
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("profile-out"))
    parser.add_argument("--budget-s", type=float, default=480)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    from ednerf_ns.bench.gpu import Bench, GpuBenchConfig

    cfg = GpuBenchConfig(
        mode="sd15",
        output=out / "profile_bench.json",
        train_steps=20,
        train_warmup=10,
        edit_steps=20,
        edit_warmup=12,
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
    summary["hash_grid_ms"] = {}
    bench.section("hash_grid", lambda: summary["hash_grid_ms"].update(hash_grid_micro(bench.device)))

    def run_variant(kind: str, name: str, options: dict) -> None:
        opts, apply, undo = patched_options(options)
        apply()
        try:
            if kind == "edit":
                result = bench.edit(name, opts, cfg.edit_warmup + cfg.edit_steps, cfg.edit_warmup)
            else:
                result = bench.train_variant(opts, cfg.train_steps, cfg.train_warmup)
            summary.setdefault(kind, {})[name] = short(result)
        finally:
            undo()
        print(json.dumps({kind: {name: summary[kind][name]}}), flush=True)

    for name, options in EDIT_VARIANTS.items():
        bench.section(f"edit_{name}", lambda n=name, o=options: run_variant("edit", n, o))
    for name, options in TRAIN_VARIANTS.items():
        if bench.affordable(f"train_{name}", 40):
            bench.section(f"train_{name}", lambda n=name, o=options: run_variant("train", n, o))
    for kind, options in (("edit", {}), ("edit", FP32)):
        if bench.affordable(f"profile_{kind}", 40):
            bench.section(f"profile_{kind}", lambda k=kind, o=options: print(profile_steps(bench, k, o, out)[:6000]))
    summary["errors"] = bench.result["errors"]
    summary["total_s"] = round(time.time() - t0, 1)
    (out / "profile_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    bench.close()


if __name__ == "__main__":
    sys.exit(main())
