"""ed-nerf runs on disk: finding and reading their config.yml, finding, reading and verifying their nerfstudio
checkpoints (safely under torch >= 2.6), and writing checkpoints atomically.

nerfstudio 1.1.5 calls `torch.load` without `weights_only`, and on some mismatches loads nothing without saying
so. Here every load is `weights_only=True` (checkpoints hold only tensors and plain containers), and every
expected parameter is checked, with one clear line when something does not fit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from ednerf_ns.errors import ArgumentError, UserError, first_line

ED_NERF_METHODS = ("ed-nerf", "ed-nerf-edit")
_STEP = re.compile(r"^step-(\d+)\.ckpt$")


@dataclass
class SourceRun:
    """An ed-nerf run on disk: its config.yml and the checkpoint to load."""

    config_path: Path
    checkpoint_path: Path
    step: int
    config: object


def find_checkpoint(load_dir: Path, load_step: int | None, flag: str | None = None) -> tuple[Path, int]:
    """The newest (or `load_step`) `step-*.ckpt` in `load_dir` (`--load-dir`, or the run named by `flag`)."""
    load_dir = Path(load_dir).expanduser()
    if not load_dir.is_dir():
        raise ArgumentError(
            f"--load-dir '{load_dir}' does not exist; pass the nerfstudio_models folder of an ed-nerf run"
        )
    steps = sorted(int(m.group(1)) for f in load_dir.iterdir() if (m := _STEP.match(f.name)))
    if not steps and (load_dir / "nerfstudio_models").is_dir():
        raise ArgumentError(f"--load-dir '{load_dir}' is a run folder; pass '{load_dir / 'nerfstudio_models'}'")
    if not steps:
        where = "--load-dir" if flag is None else f"the run of {flag}: its folder"
        raise UserError(f"{where} '{load_dir}' holds no step-*.ckpt checkpoint; did that training run save one?")
    step = steps[-1] if load_step is None else load_step
    if step not in steps:
        raise ArgumentError(f"--load-step {load_step} is not in '{load_dir}' (it has steps {steps}); pass one of them")
    return load_dir / f"step-{step:09d}.ckpt", step


def read_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True, and a clear error for a damaged or foreign file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = first_line(exc, 200)
        raise UserError(
            f"could not read checkpoint '{path}': {reason}; the file is damaged: pass another --load-step or train "
            "again"
        ) from None
    if not isinstance(state, dict) or "pipeline" not in state:
        raise UserError(f"'{path}' is not a nerfstudio checkpoint (no 'pipeline' state); pass an ed-nerf run's")
    return state


def run_config_file(path: Path) -> Path:
    """A run's config.yml, given it or the run folder."""
    path = Path(path).expanduser()
    return path / "config.yml" if path.is_dir() else path


def source_models_folder(run: Path) -> Path:
    """The nerfstudio_models folder of a run given as its folder, its config.yml or that folder itself."""
    run = Path(run).expanduser()
    if run.name == "config.yml" or run.is_file():
        return run.parent / "nerfstudio_models"
    if (run / "nerfstudio_models").is_dir() or (run / "config.yml").is_file():
        return run / "nerfstudio_models"
    return run


def read_run_config(path: Path, flag: str | None = None) -> tuple[Path, object]:
    """(config.yml, its saved TrainerConfig) of an ed-nerf or ed-nerf-edit run, with one-line errors that name
    `flag` (the command-line option the path came from) when given."""
    file = run_config_file(path)
    what = f"{flag} '{path}'" if flag else f"'{file}'"
    if not file.is_file():
        raise ArgumentError(
            f"{what} does not exist; pass the config.yml (or the folder) of an ed-nerf or ed-nerf-edit run"
        )
    try:
        config = yaml.load(file.read_text(), Loader=yaml.Loader)
    except Exception as exc:
        raise UserError(f"could not read {what}: {first_line(exc, 200)}; pass the config.yml of a run") from None
    method = config.get("method_name") if isinstance(config, dict) else getattr(config, "method_name", None)
    if method not in ED_NERF_METHODS:
        raise UserError(f"{what} is a '{method}' run, not an ed-nerf run; pass an ed-nerf or ed-nerf-edit run")
    if not hasattr(config, "pipeline"):
        raise UserError(f"{what} is not a complete run config (no pipeline); pass the config.yml ns-train wrote")
    return file, config


def require_source_run(given: object | None) -> None:
    """ed-nerf-edit edits an existing run: refuse to start without one (`given`: what names it, None = nothing)."""
    if given is None:
        raise ArgumentError(
            "ed-nerf-edit needs the run to edit: pass --source-run <ed-nerf run folder> "
            "(or --load-dir <run>/nerfstudio_models)"
        )


def locate_source_run(load_dir: Path, load_step: int | None) -> SourceRun:
    """Validate that `load_dir` is the nerfstudio_models folder of an ed-nerf run and describe it."""
    ckpt, step = find_checkpoint(load_dir, load_step)
    config_path = Path(load_dir).expanduser().parent / "config.yml"
    if not config_path.is_file():
        raise UserError(
            f"no config.yml next to '{load_dir}'; --load-dir must be the nerfstudio_models folder inside an ed-nerf run"
        )
    _, config = read_run_config(config_path)
    return SourceRun(config_path=config_path, checkpoint_path=ckpt, step=step, config=config)


def load_verified(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict that names what is missing, unexpected or mis-shaped instead of a wall of text."""
    from ednerf_ns.field import complete_frozen_geometry

    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    state = complete_frozen_geometry(dict(state), own)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        hint = ""
        if any("tcnn" in k for k in missing + unexpected):
            hint = " - the runs use different field implementations (tcnn vs torch)"
        raise UserError(f"{what} does not fit this model: {'; '.join(parts)}{hint}")
    module.load_state_dict(state, strict=True)


def save_atomic(state: dict, path: Path) -> None:
    """torch.save `state` to `path` so that a full disk, a crash or a kill never leaves a truncated checkpoint.

    The bytes go to a hidden temporary file on the same disk, are flushed to it, and the file is renamed to `path`
    (os.replace: atomic). The temporary file sits one folder up, in the run folder, not next to the checkpoints:
    nerfstudio's ns-eval / ns-render parse the name of every file in nerfstudio_models, so one left behind by a
    kill there would break them. On failure the temporary file is removed and the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent.parent / f".{path.name}.partial-{os.getpid()}"
    try:
        with open(tmp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
