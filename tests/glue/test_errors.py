"""Every refused input and fault through the real commands (docs/errors.md lists them with their lines).

Each case runs `ns-train ed-nerf ...`, `ns-train ed-nerf-edit ...`, `ednerf-eval`, `ednerf-demo` or
`ednerf-compare` in a subprocess and asserts: the exit status (2 for a bad argument, 1 for bad data, 130 for
Ctrl-C), exactly one `<command>: error: ...; ...` line, last on stderr, no "Traceback" anywhere, and that every
file of the datasets and of the source run is byte-identical afterwards. The refusals come before any model is
loaded, so each costs about one nerfstudio import; they run two at a time.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, cli_env, make_scene, run_cli, tree_hashes
from PIL import Image

TRAIN = ["-m", "nerfstudio.scripts.train"]
COMMON = ["--vis", "tensorboard", "--machine.device-type", "cpu"]


def error_line(result: subprocess.CompletedProcess, command: str, status: int) -> str:
    """The one error line of a refused command (asserting everything the docs promise about it)."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text[-3000:]
    assert result.returncode == status, (result.returncode, text[-3000:])
    errors = [line for line in text.splitlines() if ": error: " in line]
    assert len(errors) == 1, errors
    line = errors[0]
    assert result.stderr.strip().splitlines()[-1] == line
    assert line.startswith(f"{command}: error: ") and "; " in line, line
    return line


# ---------------------------------------------------------------------------------------------- the cases


@dataclass
class Case:
    """One refused input: the command line and what its one line must say."""

    name: str
    args: list[str]
    command: str
    status: int
    fragments: tuple[str, ...]
    result: subprocess.CompletedProcess | None = field(default=None, repr=False)


def _write_json(path: Path, meta) -> None:
    path.write_text(json.dumps(meta) if not isinstance(meta, str) else meta)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, scene) -> dict[str, Path]:
    """Copies of the test scene, each broken in one way."""
    root = tmp_path_factory.mktemp("bad_datasets")
    base = make_scene(root / "base", views=6)
    meta = json.loads((base / "transforms.json").read_text())
    out = {"base": base}

    def variant(name: str) -> Path:
        path = root / name
        shutil.copytree(base, path)
        out[name] = path
        return path

    _write_json(variant("empty_frames") / "transforms.json", {**meta, "frames": []})
    _write_json(variant("bad_json") / "transforms.json", json.dumps(meta)[:200])
    frames = [dict(f) for f in meta["frames"]]
    del frames[1]["transform_matrix"]
    _write_json(variant("no_pose") / "transforms.json", {**meta, "frames": frames})
    (variant("missing_image") / "images" / "frame_00002.png").unlink()
    png = variant("truncated_image") / "images" / "frame_00001.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    data = variant("float_image")
    frames = [dict(f) for f in meta["frames"]]
    frames[3]["file_path"] = "images/frame_00003.tif"
    Image.fromarray(np.random.rand(64, 64).astype(np.float32)).save(data / "images" / "frame_00003.tif")
    _write_json(data / "transforms.json", {**meta, "frames": frames})
    Image.new("RGB", (40, 30)).save(variant("resized_image") / "images" / "frame_00002.png")
    mask = variant("rgb_mask") / "masks" / "frame_00001.png"
    Image.open(mask).convert("RGB").save(mask)
    out["other_scene"] = make_scene(root / "other_scene", seed=1, views=12)
    return out


def _cases(d: dict[str, Path], tiny_sd: Path, run: Path, tmp: Path, cache: Path) -> list[Case]:
    out = str(tmp / "out")
    train = [*TRAIN, "ed-nerf", *COMMON, "--output-dir", out, "--pipeline.model.diffusion-model", str(tiny_sd)]
    good = ["--data", str(d["base"])]
    edit = [*TRAIN, "ed-nerf-edit", *COMMON, "--output-dir", out, "--load-dir", str(run / "nerfstudio_models")]
    prompt = ["--prompt", "a blue sphere"]
    broken_run = tmp / "runs" / "no_checkpoint"
    shutil.copytree(run, broken_run)
    for ckpt in (broken_run / "nerfstudio_models").glob("*.ckpt"):
        ckpt.unlink()
    truncated_run = tmp / "runs" / "truncated_checkpoint"
    shutil.copytree(run, truncated_run)
    for ckpt in (truncated_run / "nerfstudio_models").glob("*.ckpt"):
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    evaluate = ["-m", "ednerf_ns.tools.evaluate", "--output-dir", str(tmp / "eval"), "--no-clip"]
    demo = ["-m", "ednerf_ns.demo.cli", "--output-dir", str(tmp / "demo"), "--device", "cpu"]
    compare = ["-m", "ednerf_ns.tools.compare", "--output-dir", str(tmp / "compare")]
    return [
        # ns-train ed-nerf: the dataset
        Case("dataset_missing", [*train, "--data", str(tmp / "nowhere")], "ed-nerf", 2, ("does not exist", "--data")),
        Case("empty_frames", [*train, "--data", str(d["empty_frames"])], "ed-nerf", 1, ("lists no frames",)),
        Case("malformed_json", [*train, "--data", str(d["bad_json"])], "ed-nerf", 1, ("is not valid JSON", "line 1")),
        Case("frame_without_pose", [*train, "--data", str(d["no_pose"])], "ed-nerf", 1,
             ("frame 1 of", "transform_matrix")),
        Case("missing_image", [*train, "--data", str(d["missing_image"])], "ed-nerf", 1,
             ("1 of 6 frames", "frame_00002.png", "do not exist")),
        Case("truncated_image", [*train, "--data", str(d["truncated_image"])], "ed-nerf", 1,
             ("could not read image", "frame_00001.png")),
        Case("float_image", [*train, "--data", str(d["float_image"])], "ed-nerf", 1,
             ("frame_00003.tif", "pixel mode F", "8-bit RGB")),
        Case("rgb_mask", [*train, "--data", str(d["rgb_mask"])], "ed-nerf", 1,
             ("mask", "frame_00001.png", "single-channel")),
        # ns-train ed-nerf: options and the output folder
        Case("zero_steps", [*train, *good, "--max-num-iterations", "0"], "ed-nerf", 2,
             ("--max-num-iterations 0", ">= 1")),
        Case("negative_weight", [*train, *good, "--pipeline.model.interlevel-loss-mult", "-1"], "ed-nerf", 2,
             ("--pipeline.model.interlevel-loss-mult -1", ">= 0")),
        Case("zero_learning_rate", [*train, *good, "--optimizers.fields.optimizer.lr", "0"], "ed-nerf", 2,
             ("--optimizers.fields.optimizer.lr 0", "> 0")),
        Case("output_dir_under_a_file", [*train, *good, "--output-dir", str(a_file / "runs")], "ed-nerf", 2,
             ("--output-dir", "is a file")),
        # ns-train ed-nerf-edit
        Case("negative_guidance", [*edit, *prompt, "--pipeline.model.guidance-scale", "-2"], "ed-nerf-edit", 2,
             ("--pipeline.model.guidance-scale -2", ">= 0")),
        Case("inverted_t_range", [*edit, *prompt, "--pipeline.model.t-min", "0.8", "--pipeline.model.t-max", "0.2"],
             "ed-nerf-edit", 2, ("t-min 0.8 is not below", "t-max 0.2")),
        Case("t_max_one", [*edit, *prompt, "--pipeline.model.t-max", "1"], "ed-nerf-edit", 2,
             ("--pipeline.model.t-max 1", "(0, 1)")),
        Case("mask_threshold", [*edit, *prompt, "--pipeline.model.mask-threshold", "1.5"], "ed-nerf-edit", 2,
             ("--pipeline.model.mask-threshold 1.5", "[0, 1]")),
        Case("negative_dilation", [*edit, *prompt, "--pipeline.model.mask-dilation", "-1"], "ed-nerf-edit", 2,
             ("--pipeline.model.mask-dilation -1",)),
        Case("empty_prompt", [*edit, "--prompt", " "], "ed-nerf-edit", 2, ("target prompt is empty", "--prompt")),
        Case("load_dir_missing", [*TRAIN, "ed-nerf-edit", *COMMON, *prompt, "--load-dir", str(tmp / "nowhere")],
             "ed-nerf-edit", 2, ("--load-dir", "does not exist")),
        Case("load_dir_is_run_folder", [*TRAIN, "ed-nerf-edit", *COMMON, *prompt, "--load-dir", str(run)],
             "ed-nerf-edit", 2, ("is a run folder", "nerfstudio_models")),
        Case("cuda_without_gpu", [*train, *good, "--machine.device-type", "cuda"], "ed-nerf", 2,
             ("no usable CUDA GPU", "--machine.device-type cpu")),
        Case("image_size_not_camera", [*train, "--data", str(d["resized_image"])], "ed-nerf", 1,
             ("frame_00002.png' is 40x30 but its camera", "64x64")),
        Case("other_diffusion_model", [*edit, *prompt, "--pipeline.model.diffusion-model",
                                       str(REPO / "ednerf_ns" / "demo" / "weights")],
             "ed-nerf-edit", 1, ("trained with diffusion model", str(tiny_sd), "demo/weights")),
        Case("other_cameras", [*edit, *prompt, "--data", str(d["other_scene"])], "ed-nerf-edit", 1,
             ("does not have the cameras", "differs", "leave out --data")),
        Case("truncated_source_checkpoint",
             [*TRAIN, "ed-nerf-edit", *COMMON, *prompt, "--output-dir", out, "--load-dir",
              str(truncated_run / "nerfstudio_models")], "ed-nerf-edit", 1, ("could not read checkpoint",)),
        # ednerf-eval, ednerf-demo, ednerf-compare
        Case("eval_edited_missing", [*evaluate, "--source", str(run), "--edited", str(tmp / "nowhere")],
             "ednerf-eval", 2, ("--edited", "does not exist")),
        Case("eval_max_views", [*evaluate, "--source", str(run), "--edited", str(run), "--max-views", "0"],
             "ednerf-eval", 2, ("--max-views 0",)),
        Case("eval_run_without_checkpoint", [*evaluate, "--source", str(broken_run), "--edited", str(run)],
             "ednerf-eval", 1, ("the run of --source", "no step-*.ckpt")),
        Case("demo_too_few_views", [*demo, "--views", "3"], "ednerf-demo", 2, ("--views 3", "9 or more")),
        Case("demo_unknown_scene", [*demo, "--source-prompt", "a house"], "ednerf-demo", 2,
             ("--source-prompt 'a house'",)),
        Case("compare_one_frame", [*compare, "--source", str(run), "--edited", str(run), "--frames", "1"],
             "ednerf-compare", 2, ("--frames 1",)),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def refused(datasets, tiny_sd, trained_run, tmp_path_factory, cache_dir) -> dict[str, Case]:
    """Every case, run two at a time; the datasets' and the source run's files hashed before and after."""
    tmp = tmp_path_factory.mktemp("refusals")
    cases = _cases(datasets, tiny_sd, trained_run, tmp, cache_dir)
    watched = [trained_run, *datasets.values()]
    before = [tree_hashes(p) for p in watched]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: run_cli(c.args, cache_dir), cases))
    for case, result in zip(cases, results, strict=True):
        case.result = result
    assert [tree_hashes(p) for p in watched] == before
    if os.environ.get("EDNERF_ERRORS_DUMP"):  # the lines quoted in docs/errors.md
        lines = {c.name: (c.result.returncode, c.result.stderr.strip().splitlines()[-1:]) for c in cases}
        Path(os.environ["EDNERF_ERRORS_DUMP"]).write_text(json.dumps(lines, indent=1))
    return {c.name: c for c in cases}


CASE_NAMES = [
    "dataset_missing", "empty_frames", "malformed_json", "frame_without_pose", "missing_image", "truncated_image",
    "float_image", "rgb_mask", "zero_steps", "negative_weight", "zero_learning_rate", "output_dir_under_a_file",
    "negative_guidance", "inverted_t_range", "t_max_one", "mask_threshold", "negative_dilation", "empty_prompt",
    "load_dir_missing", "load_dir_is_run_folder", "cuda_without_gpu", "image_size_not_camera",
    "other_diffusion_model", "other_cameras", "truncated_source_checkpoint",
    "eval_edited_missing", "eval_max_views", "eval_run_without_checkpoint", "demo_too_few_views",
    "demo_unknown_scene", "compare_one_frame",
]  # fmt: skip


@pytest.mark.parametrize("name", CASE_NAMES)
def test_refused_in_one_line(refused, name):
    if name == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    case = refused[name]
    line = error_line(case.result, case.command, case.status)
    for fragment in case.fragments:
        assert fragment in line, line


def test_every_case_is_listed(refused):
    assert sorted(refused) == sorted(CASE_NAMES)
    doc = (REPO / "docs" / "errors.md").read_text()
    missing = [name for name in CASE_NAMES if f"`{name}`" not in doc]
    assert not missing, f"docs/errors.md does not list {missing}"


# ---------------------------------------------------------------------------------------------- faults while running


def run_config(run: Path, out: Path, **options) -> Path:
    """A copy of `run`'s config.yml (small test architecture) with `options` set (dotted names), for
    `ns-train ed-nerf --load-config`."""
    config = yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader)
    for dotted, value in options.items():
        *parents, name = dotted.split(".")
        target = config
        for part in parents:
            target = target[part] if isinstance(target, dict) else getattr(target, part)
        if isinstance(target, dict):
            target[name] = value
        else:
            setattr(target, name, value)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yml"
    path.write_text(yaml.dump(config))
    return path


def _limit_file_size() -> None:  # in the child: a disk that fills up at 400 kB per file
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))


def test_full_disk_keeps_the_earlier_checkpoints(trained_run, tmp_path, cache_dir):
    run = tmp_path / "test" / "ed-nerf" / trained_run.name  # a copy of the run, resumed in place
    shutil.copytree(trained_run, run)
    earlier = tree_hashes(run / "nerfstudio_models")
    config = run_config(
        trained_run, tmp_path / "cfg", output_dir=tmp_path, load_dir=run / "nerfstudio_models",
        max_num_iterations=2, steps_per_save=1,
    )  # fmt: skip
    result = run_cli([*TRAIN, "ed-nerf", "--load-config", str(config)], cache_dir, preexec_fn=_limit_file_size)
    line = error_line(result, "ed-nerf", 1)
    assert "could not save checkpoint" in line and "File too large" in line and "earlier checkpoints are kept" in line
    assert tree_hashes(run / "nerfstudio_models") == earlier
    assert not [p for p in run.rglob("*") if "partial" in p.name]


def test_diverging_run_stops_without_saving(trained_run, tmp_path, cache_dir):
    config = run_config(
        trained_run, tmp_path / "cfg", output_dir=tmp_path / "out", max_num_iterations=200, steps_per_save=100,
        max_bad_steps=5, **{"logging.steps_per_log": 5, "optimizers.fields.optimizer.lr": 1e30,
                            "optimizers.proposal_networks.optimizer.lr": 1e30},
    )  # fmt: skip
    result = run_cli([*TRAIN, "ed-nerf", "--load-config", str(config)], cache_dir)
    line = error_line(result, "ed-nerf", 1)
    assert "training diverged at step" in line and "NaN or infinite loss" in line and "learning rates" in line
    assert "more training steps had a NaN or infinite loss" in result.stdout + result.stderr
    assert not list((tmp_path / "out").rglob("*.ckpt"))


def interrupt_training(args: list[str], out: Path, command: str, cache: Path) -> tuple[str, int]:
    """Start a training command, press Ctrl-C once steps run; check the one line and the saved checkpoint.
    Returns the line and the step it saved."""
    from ednerf_ns.checkpoint import read_checkpoint

    cmd = [sys.executable, *args]
    # Ctrl-C by default in the child even when pytest itself runs with SIGINT ignored (started with `nohup ... &`
    # from a script): an ignored SIGINT is inherited, and the child would then never see the key press
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(cache),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # wait until a step has finished: nerfstudio's step table prints its first row
        seen.append(line)
        if re.search(r"\d+ \(\d+\.\d+%\)", line):
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    text = "".join(seen) + stdout + stderr
    assert proc.returncode == 130 and "Traceback" not in text, text[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"{command}: interrupted after step "), line
    step = int(line.split("after step ")[1].split(";")[0])
    ckpts = list(out.rglob("*.ckpt"))
    assert [p.name for p in ckpts] == [f"step-{step:09d}.ckpt"]
    assert read_checkpoint(ckpts[0])["step"] == step
    return line, step


def test_ctrl_c_saves_the_last_step_and_says_how_to_resume(trained_run, tmp_path, cache_dir):
    config = run_config(trained_run, tmp_path / "cfg", output_dir=tmp_path / "out", max_num_iterations=100_000)
    args = [*TRAIN, "ed-nerf", "--load-config", str(config)]
    line, _ = interrupt_training(args, tmp_path / "out", "ed-nerf", cache_dir)
    assert "resume with: ns-train ed-nerf --load-dir" in line


def test_ctrl_c_during_an_edit(trained_run, tmp_path, cache_dir):
    before = tree_hashes(trained_run)
    args = [*TRAIN, "ed-nerf-edit", *COMMON, "--source-run", str(trained_run), "--prompt", "a blue sphere",
            "--output-dir", str(tmp_path / "out"), "--max-num-iterations", "100000"]  # fmt: skip
    line, _ = interrupt_training(args, tmp_path / "out", "ed-nerf-edit", cache_dir)
    assert "continue this edit with: ns-train ed-nerf-edit --resume" in line
    assert tree_hashes(trained_run) == before
