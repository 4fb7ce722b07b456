"""Render the JSON of `ednerf-bench gpu` as the markdown tables of docs/benchmarks.md.

    python benchmarks/to_markdown.py bench.json > bench.md

Standard library only (it runs on the GPU machine right after the benchmark).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def med(d: dict | None, key: str = "median", digits: int = 1) -> str:
    return fmt((d or {}).get(key), digits)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(r: dict) -> str:
    env = r.get("environment") or {}
    out: list[str] = [f"### ednerf-bench gpu, mode `{r.get('mode')}`, {r.get('date')}", ""]
    impl = (r.get("train") or {}).get("implementation", "-")
    out.append(
        table(
            ["card", "driver", "torch (CUDA)", "diffusers", "transformers", "nerfstudio", "hash grid", "timing"],
            [
                [
                    fmt(env.get("card")),
                    fmt(env.get("driver")),
                    f"{env.get('torch')} ({env.get('torch_cuda')})",
                    fmt(env.get("diffusers")),
                    fmt(env.get("transformers")),
                    fmt(env.get("nerfstudio")),
                    f"{impl} (tinycudann {'present' if env.get('tinycudann') else 'absent'})",
                    fmt(r.get("timing")),
                ]
            ],
        )
    )
    out += ["", f"Command: `{r.get('command')}`; commit {env.get('git_commit')}; total {fmt(r.get('total_s'))} s.", ""]

    targets = r.get("targets") or {}
    if targets and r.get("mode") == "sd15" and env.get("device", "").startswith("cuda"):
        out += ["**Targets** (SD 1.5 size; the issue states them for one H100)", ""]
        rows = [[k, fmt(v.get("measured"), 2), fmt(v.get("target")), fmt(v.get("met"))] for k, v in targets.items()]
        out += [table(["metric", "measured", "target", "met"], rows), ""]

    unet = {**(r.get("unet") or {}), **(r.get("unet_compile") or {})}
    variants = [k for k, v in unet.items() if isinstance(v, dict)]
    if variants:
        out += [f"**UNet call** (batch {unet.get('input_shape')}, {unet.get('dtype')})", ""]
        rows = []
        for name in variants:
            v = unet[name]
            if "error" in v:
                rows.append([name, "error: " + v["error"][:80], "", "", "", ""])
                continue
            runner = v.get("runner") or {}
            rows.append(
                [
                    name,
                    f"{med(v.get('ms'), digits=2)} (mean {med(v.get('ms'), 'mean', 2)})",
                    fmt(v.get("first_call_s"), 2),
                    fmt(v.get("speedup_vs_eager"), 2),
                    fmt(v.get("rel_error_vs_eager")),
                    f"{runner.get('captures', 0)} / {runner.get('replays', 0)}",
                ]
            )
        header = ["variant", "ms per call", "first call s", "speed-up", "rel. error vs eager", "graphs / replays"]
        out += [table(header, rows), ""]

    floors = r.get("floors") or {}
    ceilings = r.get("ceilings") or {}
    if floors:
        out += ["**Floors of one UNet call**", ""]
        rows = [
            ["FLOPs (counted on the real call)", f"{floors.get('unet_flops', 0) / 1e9:.1f} GFLOP"],
            ["FLOPs (same shapes, counted on the meta device)", f"{floors.get('unet_flops_meta', 0) / 1e9:.1f} GFLOP"],
            [
                "FLOPs, SD 1.5 batch 4 at 64x64 on the meta device",
                f"{floors.get('sd15_unet_flops_batch4_64x64', 0) / 1e9:.1f} GFLOP",
            ],
            ["measured fp16 matmul rate", f"{fmt(ceilings.get('matmul_fp16_tflops'))} TFLOP/s"],
            ["measured copy bandwidth (read + write)", f"{fmt(ceilings.get('copy_gb_per_s'))} GB/s"],
            ["compute floor", f"{fmt(floors.get('compute_floor_ms'), 2)} ms"],
            [
                "bytes floor (weights + inputs + output once)",
                f"{floors.get('bytes_floor', 0) / 1e9:.3f} GB = {fmt(floors.get('bytes_floor_ms'), 2)} ms",
            ],
            ["intermediates written by eager ops", f"{floors.get('activation_bytes_written_eager', 0) / 1e9:.3f} GB"],
            ["unfused traffic (write + read them once)", f"{fmt(floors.get('unfused_activation_traffic_ms'), 2)} ms"],
        ]
        for name in ("eager", "cuda_graph", "cuda_graph+channels_last"):
            if f"{name}_achieved_tflops" in floors:
                rows.append(
                    [
                        f"{name}: achieved",
                        f"{fmt(floors[f'{name}_achieved_tflops'])} TFLOP/s, "
                        f"{fmt(floors[f'{name}_vs_compute_floor'])}x the compute floor",
                    ]
                )
        out += [table(["quantity", "value"], rows), ""]

    for key, title in (("train", "Training (`ed-nerf`)"), ("edit", "Editing (`ed-nerf-edit`)")):
        run = r.get(key)
        if not run:
            continue
        out += [f"**{title}**: {run.get('config', '')}", ""]
        rows = [
            ["step", f"{med(run.get('step_ms'))} ms median, {med(run.get('step_ms'), 'mean')} mean"],
            ["first step", f"{fmt(run.get('first_step_ms'))} ms"],
            [
                "setup / loop",
                f"{fmt(run.get('setup_s'))} s / {fmt(run.get('loop_s'))} s for {run.get('steps_run')} steps",
            ],
        ]
        if run.get("step_host_ms"):
            rows.append(["step (host clock)", f"{med(run.get('step_host_ms'))} ms median"])
        if "steps_per_s" in run:
            rows.append(["steps per second", fmt(run.get("steps_per_s"))])
        if "measured_default_s" in run:
            rows.append(
                [f"default length ({run.get('default_steps')} steps), measured", f"{fmt(run['measured_default_s'])} s"]
            )
        rows.append(
            [
                f"default length ({run.get('default_steps')} steps), extrapolated",
                f"{fmt(run.get('extrapolated_default_s'))} s",
            ]
        )
        if "peak_memory_gb" in run:
            rows.append(
                [
                    "peak memory (allocated / reserved)",
                    f"{fmt(run['peak_memory_gb'], 2)} / {fmt(run.get('peak_reserved_gb'), 2)} GB "
                    f"(after warm-up {fmt(run.get('peak_memory_after_warmup_gb'), 2)} GB; "
                    f"resident before: {fmt(run.get('resident_before_gb'), 2)} GB)",
                ]
            )
        graph = run.get("step_graph")
        if graph:
            rows.append(
                [
                    "step graphs / replays / eager steps",
                    f"{graph['captures']} / {graph['replays']} / {graph['eager_steps']}",
                ]
            )
            if graph.get("capture_failure"):
                rows.append(["step graph capture failure", graph["capture_failure"][:150]])
        if "unet_runner" in run:
            ur = run["unet_runner"]
            rows.append(
                ["UNet graphs / replays / direct calls", f"{ur['captures']} / {ur['replays']} / {ur['direct_calls']}"]
            )
            if ur.get("capture_failure"):
                rows.append(["capture failure", ur["capture_failure"][:150]])
        syncs = run.get("host_syncs") or {}
        if "per_step" in syncs:
            rows.append(["host synchronisations per step", fmt(syncs["per_step"])])
        out += [table(["", key], rows), ""]
        phases = run.get("phases_ms") or {}
        host = run.get("phases_host_ms") or {}
        order = ["iteration", "data", "step_graph", "render", "metrics", "loss", "unet", "loss_without_unet",
                 "backward", "optimizer", "scheduler", "zero_grad", "loop_outside_iteration"]  # fmt: skip
        if host:
            rows = [
                [name, med(phases.get(name), digits=2), med(host.get(name), digits=2)]
                for name in order
                if name in phases
            ]
            out += [table(["phase", "GPU ms (median)", "host ms (median)"], rows), ""]
        else:
            rows = [[name, med(phases.get(name), digits=2)] for name in order if name in phases]
            out += [table(["phase", "ms (median)"], rows), ""]
        if syncs.get("sites_per_step"):
            rows = [[f"`{site[:110]}`", fmt(n, 2)] for site, n in syncs["sites_per_step"].items()]
            out += [table(["host synchronisation site", "per step"], rows), ""]

    edit_variants = {k: v for k, v in (r.get("edit_variants") or {}).items() if v}
    if edit_variants:
        out += ["**Edit step without each speed-up** (short edits, same process)", ""]
        rows = []
        for name, v in edit_variants.items():
            p = v.get("phases_ms") or {}
            rows.append(
                [
                    name,
                    med(v.get("step_ms")),
                    med(v.get("step_ms"), "mean"),
                    med(p.get("step_graph"), digits=2),
                    med(p.get("unet"), digits=2),
                    med(p.get("render"), digits=2),
                    med(p.get("backward"), digits=2),
                    fmt(v.get("peak_memory_gb"), 2),
                ]
            )
        header = [
            "variant",
            "step ms median",
            "mean",
            "step graph ms",
            "UNet ms",
            "render ms",
            "backward ms",
            "peak GB",
        ]
        out += [table(header, rows), ""]

    grids = {k: v for k, v in (r.get("hash_grid") or {}).items() if isinstance(v, dict)}
    if grids:
        out += [f"**Hash grids of one step** ({r['hash_grid'].get('rays')} rays, forward + table gradient)", ""]
        rows = [
            [
                name,
                str(g.get("samples")),
                str(g.get("levels")),
                med(g.get("torch_ms"), digits=2),
                med(g.get("triton_ms"), digits=2),
                fmt(g.get("speedup"), 2),
                f"{g.get('forward_rel_diff')} / {g.get('grad_rel_diff')}",
            ]
            for name, g in grids.items()
        ]
        header = ["grid", "samples", "levels", "torch ms", "Triton ms", "speed-up", "rel. diff fwd / grad"]
        out += [table(header, rows), ""]
    estimate = r.get("train_default_estimate")
    if estimate:
        out += [
            f"Default training ({estimate['anneal_steps']} anneal steps eager, the rest replayed): "
            f"{fmt(estimate['extrapolated_default_s'])} s ({estimate['how']}).",
            "",
        ]

    dataset = r.get("dataset") or {}
    if dataset:
        out += [
            f"Scene: {dataset.get('views')} views at {dataset.get('resolution')} px ({dataset.get('latent_size')}^2 "
            f"latents), written in {fmt(dataset.get('write_s'))} s on the CPU "
            f"({fmt(dataset.get('cpu_render_and_png_ms_per_view'))} ms per view); on the GPU the renderer takes "
            f"{fmt(dataset.get('gpu_render_ms_per_view_supersample2'))} ms per view.",
            "",
        ]
    model = r.get("model") or {}
    if model:
        out += [f"Model: {model.get('source')}; loaded in {fmt(model.get('load_s'))} s.", ""]
    if r.get("errors"):
        out += ["**Errors**", ""] + [f"- {k}: `{str(v)[:300]}`" for k, v in r["errors"].items()] + [""]
    if r.get("skipped"):
        out += ["**Skipped**", ""] + [f"- {k}: {v}" for k, v in r["skipped"].items()] + [""]
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/to_markdown.py bench.json")
    print(render(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
