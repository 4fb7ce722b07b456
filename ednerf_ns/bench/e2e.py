"""`ednerf-bench e2e`: the seconds a user waits for, from process start to exit.

It runs the real commands as the README gives them - `ns-train ed-nerf`, then `ns-train ed-nerf-edit` on that run,
and `ns-train --help` - each as a subprocess timed from outside, and breaks each run's wall clock down with the
phase marks the run writes (`ednerf_ns.timeline`: imports, configuration, dataset, model, latents, source run and
prompts, trainer setup, first step, steps, final save, exit). It also measures what importing the plugin adds to
nerfstudio's own import (fresh processes, with and without the plugin registered).

Two modes: `sd15` (random weights of Stable Diffusion 1.5's size, in diffusers layout, loaded through
from_pretrained; a 512 px procedural scene of 60 views; CUDA; the methods' default lengths) and `tiny` (the
embedded model, a 128 px scene, the CPU, the small-scene preset, short runs). Prints JSON; `--output` also writes
it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ednerf_ns import timeline
from ednerf_ns.errors import UserError

SOURCE_PROMPT = "a red sphere on a gray checkered floor"
TARGET_PROMPT = "a blue sphere on a gray checkered floor"
MORE_PROMPTS = ("a blue sphere on a gray checkered floor", "a green sphere on a gray checkered floor",
                "a yellow sphere on a gray checkered floor")  # fmt: skip
EDIT_MANY_MODULE = "ednerf_ns.tools.edit_many"
METHODS_VARIABLE = "ed-nerf=ednerf_ns.configs:ed_nerf,ed-nerf-edit=ednerf_ns.configs:ed_nerf_edit"

# The small-scene preset (ednerf_ns.presets) as command-line options, for the tiny mode's CPU runs.
SMALL_SCENE_OPTIONS = (
    "--pipeline.model.num-levels 8 --pipeline.model.max-res 256 --pipeline.model.log2-hashmap-size 15 "
    "--pipeline.model.hidden-dim 32 --pipeline.model.hidden-dim-color 32 "
    "--pipeline.model.num-proposal-samples-per-ray 64 32 --pipeline.model.num-nerf-samples-per-ray 24 "
    "--pipeline.model.proposal-weights-anneal-max-num-iters 200 --pipeline.model.refinement-width 32 "
    "--pipeline.model.refinement-heads 2"
).split()


@dataclass
class EndToEndConfig:
    """Wall clock of `ns-train ed-nerf`, `ns-train ed-nerf-edit` and `ns-train --help`, phase by phase."""

    mode: Literal["sd15", "tiny"] = "sd15"
    """sd15: random-weight SD 1.5-size model, 512 px scene of 60 views, CUDA, default lengths. tiny: the embedded
    model, 128 px scene, CPU, small-scene preset, short runs."""
    workdir: Path | None = None
    """Where the model, the scene and the runs go; a scene and model already there are reused (another version of
    the code can then be timed on the same inputs). Default: a temporary folder, deleted at the end."""
    output: Path | None = None
    """Also write the JSON result to this file."""
    resolution: int | None = None
    """Scene image size in pixels. Default 512 (sd15) / 128 (tiny)."""
    views: int | None = None
    """Views of the scene (every 8th held out). Default 60 (sd15) / 48 (tiny)."""
    train_steps: int | None = None
    """ed-nerf steps; default: the method's own (sd15) / 300 (tiny)."""
    edit_steps: int | None = None
    """ed-nerf-edit steps; default: the method's own (sd15) / 60 (tiny)."""
    vis: Literal["viewer", "tensorboard"] = "viewer"
    """viewer: as the README runs it (the viewer serves while training; --viewer.quit-on-train-completion True
    ends the process after the final save). tensorboard: no viewer."""
    help: bool = True
    """Also time `ns-train --help` (nerfstudio and every plugin imported, nothing built)."""
    import_repeats: int = 3
    """Fresh processes per side of the import measurement (the median is reported)."""
    extra_edit_args: tuple[str, ...] = ()
    """More options for the edit command."""
    edit_variants: tuple[str, ...] = ()
    """More edits of the same source run, each 'name=--option value ...' (e.g. 'no_unet_graph=
    --pipeline.model.unet-cuda-graph False'): a lever's before and after in one process tree."""
    seed: int = 0
    """Seed of the scene and the model weights."""
    timeout_s: float = 900.0
    """Give up on a command after this many seconds."""
    prompts: tuple[str, ...] = MORE_PROMPTS
    """Also edit the timed training run with `ednerf-edit --prompts` these prompts, in one process: what the first
    and each further prompt cost. Empty: skipped."""
    warmup: bool = True
    """First run a short, untimed training and edit: kernels compiled once per machine (Triton) and the file cache
    are then warm, as on a machine that has run the method before, whichever version is timed first."""


def ednerf_edit() -> list[str]:
    """`ednerf-edit` (the console script), or the same module through this Python."""
    found = shutil.which("ednerf-edit")
    return [found] if found else [sys.executable, "-m", EDIT_MANY_MODULE]


def ns_train() -> list[str]:
    """`ns-train` as the user runs it (the console script), or the same module through this Python."""
    found = shutil.which("ns-train")
    return [found] if found else [sys.executable, "-m", "nerfstudio.scripts.train"]


def child_env(cache: Path | None = None) -> dict[str, str]:
    """The environment of the commands: offline, and the methods registered even where the project is not
    installed (the GPU machines run it from a source tree); `cache`: their latent cache (XDG_CACHE_HOME)."""
    env = dict(os.environ)
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    env.setdefault("NERFSTUDIO_METHOD_CONFIGS", METHODS_VARIABLE)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def timed(args: list[str], log: Path, timeout: float, cache: Path | None = None) -> dict:
    """Run `args`, its output to `log`; seconds from just before the process starts to just after it exits."""
    with open(log, "w") as out:
        start = time.time()
        env = child_env(cache)
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        end = time.time()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise UserError(f"'{' '.join(args[:3])} ...' failed (exit {proc.returncode}): {' | '.join(tail)[:400]}")
    return {"start": start, "end": end, "wall_s": round(end - start, 3)}


def run_command(args: list[str], run_dir: Path, log: Path, timeout: float, steps: int, cache: Path) -> dict:
    """One ns-train run of `steps` steps: its wall clock and the phases its timeline.json records."""
    result = timed(args, log, timeout, cache)
    marks = json.loads((run_dir / timeline.FILE_NAME).read_text())["marks"]
    out = {"command": " ".join(Path(a).name if a.startswith("/") else a for a in args), "wall_s": result["wall_s"]}
    out["phases_s"] = phases = timeline.phases(marks, result["start"], result["end"])
    out["steps"] = steps
    if steps > 1 and "steps" in phases:  # the first step is its own phase
        out["ms_per_step"] = round(phases["steps"] / (steps - 1) * 1e3, 2)
    out["events_s"] = {k: round(v - result["start"], 3) for k, v in marks.items()}
    return out


IMPORT_PROBE = """
import importlib.metadata as metadata, os, sys, time
found = metadata.entry_points
def without_plugin(**kwargs):  # nerfstudio finds methods through entry points: hide this plugin's
    eps = found(**kwargs)
    if kwargs.get("group") == "nerfstudio.method_configs":
        eps = metadata.EntryPoints(ep for ep in eps if not ep.value.startswith("ednerf_ns"))
    return eps
metadata.entry_points = without_plugin
t = time.perf_counter()
import nerfstudio.plugins.registry as registry  # imported by method_configs anyway; first, to time discovery
discover, spent = registry.discover_methods, []
def timed_discover():  # where plugins are loaded: the plugin's own share, without the noise of the rest
    t0 = time.perf_counter()
    try:
        return discover()
    finally:
        spent.append(time.perf_counter() - t0)
registry.discover_methods = timed_discover
import nerfstudio.configs.method_configs as m
elapsed = time.perf_counter() - t
assert ("ed-nerf" in m.all_methods) == (sys.argv[1] == "with"), sorted(m.all_methods)
print(elapsed, sum(spent))
"""


def import_overhead(repeats: int) -> dict:
    """Seconds to import nerfstudio's method registry with and without this plugin (fresh processes, medians)."""
    times: dict[str, list[float]] = {"without": [], "with": []}
    discovery: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(repeats):
        for side in ("without", "with"):
            env = child_env()
            if side == "without":
                env.pop("NERFSTUDIO_METHOD_CONFIGS", None)
            else:
                env["NERFSTUDIO_METHOD_CONFIGS"] = METHODS_VARIABLE
            proc = subprocess.run(
                [sys.executable, "-c", IMPORT_PROBE, side], capture_output=True, text=True, env=env, timeout=300
            )
            if proc.returncode != 0:
                raise UserError(f"the import probe failed: {proc.stderr.strip().splitlines()[-1:]}")
            total, discover = (float(x) for x in proc.stdout.strip().splitlines()[-1].split())
            times[side].append(total)
            discovery[side].append(discover)
    without, with_plugin = statistics.median(times["without"]), statistics.median(times["with"])
    return {
        "nerfstudio_methods_s": round(without, 3),
        "with_plugin_s": round(with_plugin, 3),
        "plugin_adds_s": round(with_plugin - without, 3),
        # nerfstudio's plugin discovery with and without the plugin: its load alone, measured where it happens
        # (the difference of the totals above carries the noise of nerfstudio's 4-8 s import)
        "plugin_load_s": round(statistics.median(discovery["with"]) - statistics.median(discovery["without"]), 3),
        "samples_s": {k: [round(v, 3) for v in vals] for k, vals in times.items()},
        "discovery_samples_s": {k: [round(v, 3) for v in vals] for k, vals in discovery.items()},
    }


def prepare(cfg: EndToEndConfig, workdir: Path, device: str) -> tuple[Path, Path, dict]:
    """The scene (nerfstudio dataset) and the diffusion model folder."""
    from ednerf_ns.demo.cli import EMBEDDED_MODEL, parse_scene_prompt
    from ednerf_ns.demo.scene import write_nerfstudio_dataset

    resolution = cfg.resolution or (512 if cfg.mode == "sd15" else 128)
    views = cfg.views or (60 if cfg.mode == "sd15" else 48)
    t0 = time.perf_counter()
    scene = workdir / f"scene-{resolution}px-{views}views-seed{cfg.seed}"
    if not (scene / "transforms.json").is_file():
        write_nerfstudio_dataset(
            parse_scene_prompt(SOURCE_PROMPT), scene, num_views=views, resolution=resolution,
            seed=cfg.seed, supersample=1 if cfg.mode == "sd15" else 3, write_split=True,
        )  # fmt: skip
    data = scene
    info: dict = {"resolution": resolution, "views": views, "scene_write_s": round(time.perf_counter() - t0, 1)}
    if cfg.mode == "sd15":
        import torch

        from ednerf_ns.bench.gpu import build_sd15

        model = workdir / f"sd15-random-seed{cfg.seed}"
        if not (model / "model_index.json").is_file():
            info["model"] = build_sd15(model, torch.device(device), cfg.seed)
        else:
            info["model"] = {"reused": str(model)}
        info["model"]["source"] = "random weights, SD 1.5 architecture, diffusers layout (fp16)"
    else:
        model = EMBEDDED_MODEL
        info["model"] = {"source": "embedded tiny model (ednerf_ns/demo/weights)"}
    return data, Path(model), info


def common_args(cfg: EndToEndConfig, runs: Path, stamp: str) -> list[str]:
    args = ["--output-dir", str(runs), "--experiment-name", "e2e", "--timestamp", stamp]
    if cfg.vis == "viewer":
        args += ["--viewer.quit-on-train-completion", "True"]
    else:
        args += ["--vis", "tensorboard"]
    if cfg.mode == "tiny":
        args += ["--machine.device-type", "cpu"]
    return args


def commands(cfg, data: Path, model: Path, runs: Path, cache: Path, train_steps, edit_steps, name: str,
             workdir: Path, record) -> None:  # fmt: skip
    """ns-train ed-nerf, then ns-train ed-nerf-edit of that run (and the edit variants); `record`: (report, save)
    to time them, None for an untimed warm-up."""
    from ednerf_ns.configs import EDIT_STEPS, TRAIN_STEPS

    def run(key: str, args: list[str], folder: Path, steps: int) -> None:
        result = run_command(args, folder, workdir / f"{name}-{key}.log", cfg.timeout_s, steps, cache)
        if record is not None:
            record[0][key] = result
            record[1]()

    steps = train_steps or cfg.train_steps or (TRAIN_STEPS if cfg.mode == "sd15" else 300)
    train = [*ns_train(), "ed-nerf", "--data", str(data), "--pipeline.model.diffusion-model", str(model)]
    train += [*common_args(cfg, runs, f"{name}-train"), "--max-num-iterations", str(steps)]
    if cfg.mode == "tiny":
        train += SMALL_SCENE_OPTIONS
    source = runs / "e2e" / "ed-nerf" / f"{name}-train"
    run("train", train, source, steps)
    steps = edit_steps or cfg.edit_steps or (EDIT_STEPS if cfg.mode == "sd15" else 60)
    edit = [*ns_train(), "ed-nerf-edit", "--source-run", str(source), "--prompt", TARGET_PROMPT]
    edit += ["--pipeline.model.source-prompt", SOURCE_PROMPT, *common_args(cfg, runs, f"{name}-edit")]
    edit += ["--max-num-iterations", str(steps), *cfg.extra_edit_args]
    run("edit", edit, runs / "e2e" / "ed-nerf-edit" / f"{name}-edit", steps)
    for variant in cfg.edit_variants if record is not None else ():
        key, _, options = variant.partition("=")
        args = [a if a != f"{name}-edit" else f"{name}-{key}" for a in edit] + options.split()
        run(f"edit:{key}", args, runs / "e2e" / "ed-nerf-edit" / f"{name}-{key}", steps)
    if record is not None and cfg.prompts:
        record[0]["prompts"] = several_prompts(cfg, source, runs, steps, cache, workdir / f"{name}-prompts.log")
        record[1]()


def several_prompts(cfg, source: Path, runs: Path, steps: int, cache: Path, log: Path) -> dict:
    """`ednerf-edit --prompts ...` of `source` in one process: its wall clock, and per prompt the seconds from the
    previous prompt's final save (the first: from process start) to its own, and how much of that was not steps."""
    out_dir = runs / "prompts"
    args = [*ednerf_edit(), "--source-run", str(source), "--prompts", *cfg.prompts]
    args += ["--pipeline.model.source-prompt", SOURCE_PROMPT, "--output-dir", str(out_dir)]
    args += ["--experiment-name", "e2e", "--max-num-iterations", str(steps)]
    args += ["--vis", "tensorboard"] if cfg.vis == "tensorboard" else []
    args += ["--machine.device-type", "cpu"] if cfg.mode == "tiny" else []
    result = timed(args, log, cfg.timeout_s * len(cfg.prompts), cache)
    folders = sorted((out_dir / "e2e" / "ed-nerf-edit").glob("*_*"), key=lambda p: p.stat().st_mtime)
    folders = [f for f in folders if f.is_dir()]
    if len(folders) != len(cfg.prompts):
        raise UserError(f"ednerf-edit wrote {len(folders)} runs for {len(cfg.prompts)} prompts (see {log})")
    per_prompt, previous = [], result["start"]
    for folder in folders:
        marks = json.loads((folder / timeline.FILE_NAME).read_text())["marks"]
        total = marks["saved"] - previous
        stepping = marks["steps_done"] - marks["setup_done"]
        per_prompt.append({"run": folder.name, "s": round(total, 3), "not_steps_s": round(total - stepping, 3)})
        previous = marks["saved"]
    return {"command": "ednerf-edit --prompts " + " ".join(repr(p) for p in cfg.prompts), "steps": steps,
            "wall_s": result["wall_s"], "per_prompt": per_prompt}  # fmt: skip


def main(cfg: EndToEndConfig) -> dict:
    import torch

    device = "cuda" if cfg.mode == "sd15" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("ednerf-bench e2e --mode sd15 needs a CUDA GPU; use --mode tiny on a CPU")
    temporary = cfg.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ednerf-e2e-")) if temporary else Path(cfg.workdir)  # type: ignore[arg-type]
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "benchmark": "ednerf-bench e2e",
        "mode": cfg.mode,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "cpu_count": os.cpu_count(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
    }

    def save() -> None:
        if cfg.output is not None:
            Path(cfg.output).write_text(json.dumps(report, indent=1))

    try:
        data, model, report["prepare"] = prepare(cfg, workdir, device)
        save()
        report["import"] = import_overhead(cfg.import_repeats)
        save()
        if cfg.help:
            report["help"] = timed([*ns_train(), "--help"], workdir / "help.log", cfg.timeout_s)
            report["help"] = {"wall_s": report["help"]["wall_s"]}
            save()
        runs = workdir / "runs"
        shutil.rmtree(runs, ignore_errors=True)
        cache = workdir / f"cache-{os.getpid()}"  # latents encoded by this invocation's own training run
        if cfg.warmup:  # with a cache of its own: the timed training still encodes every latent, as a first run does
            commands(cfg, data, model, runs, workdir / f"cache-warmup-{os.getpid()}", 20, 5, "warmup", workdir, None)
        commands(cfg, data, model, runs, cache, None, None, "e2e", workdir, record=(report, save))
    finally:
        for folder in workdir.glob(f"cache-*{os.getpid()}"):
            shutil.rmtree(folder, ignore_errors=True)
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return report
