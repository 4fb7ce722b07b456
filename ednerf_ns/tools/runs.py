"""Loading finished ed-nerf runs and rendering their views (shared by `ednerf-demo`, `ednerf-eval` and benchmarks)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ednerf_ns.checkpoint import find_checkpoint, load_verified, read_checkpoint, read_run_config
from ednerf_ns.errors import UserError
from ednerf_ns.ops.latent_grid import image_float, latent_at_latent_resolution
from ednerf_ns.validate import check_dataset


def train_in_process(config, on_step: Callable[[int], None] | None = None) -> Path:
    """Run an ns-train style training of `config` in this process and return the run folder.

    What `ns-train` does (seed, save config.yml, build, train), plus: nerfstudio keeps its log writers in module
    globals and only ever appends to them. `ns-train` is one process per run; in one process, a second run would
    keep writing into the first run's tensorboard file - modifying a source run during its edit - so the writers
    are closed and cleared before and after.
    """
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    start_run(config)
    try:
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        if on_step is not None:

            def report(step: int) -> None:  # nerfstudio requires the parameter to be called `step`
                on_step(step)

            where = [TrainingCallbackLocation.AFTER_TRAIN_ITERATION]
            trainer.callbacks.append(TrainingCallback(where, report, update_every_num_iters=1))
        trainer.train()
    finally:
        reset_nerfstudio_writers()
    return config.get_base_dir()


def start_run(config) -> None:
    """What `ns-train` does before building the trainer: seed everything, stamp and save config.yml; plus clear
    nerfstudio's global log writers, which a previous run in this process would otherwise keep writing to."""
    reset_nerfstudio_writers()
    random.seed(config.machine.seed)
    np.random.seed(config.machine.seed)
    torch.manual_seed(config.machine.seed)
    config.set_timestamp()
    config.save_config()


def reset_nerfstudio_writers() -> None:
    from nerfstudio.utils import writer

    for event_writer in writer.EVENT_WRITERS:
        if hasattr(event_writer, "tb_writer"):
            event_writer.tb_writer.close()
    writer.EVENT_WRITERS.clear()
    writer.EVENT_STORAGE.clear()
    writer.GLOBAL_BUFFER.clear()


@dataclass
class RenderedView:
    """One rendered view of a run."""

    name: str
    """File name of the dataset image this view reproduces."""
    rgb: Tensor
    """[H, W, 3] decoded render in [0, 1] (CPU)."""
    image: Tensor
    """[H, W, 3] the dataset image, resized like the training targets (CPU)."""
    mask: Tensor | None
    """[H, W] bool object/edit mask from the dataset at render resolution, if it has masks."""
    latent: Tensor
    """[C, h, w] the rendered (refined) latent at latent resolution (CPU)."""
    target_latent: Tensor
    """[C, h, w] the VAE latent of the dataset image (CPU)."""


def check_run(path: Path, flag: str | None = None, with_data: bool = True) -> tuple[Path, object, Path]:
    """The validation pass for a finished run that a command reads: its config.yml, a readable checkpoint in the
    nerfstudio_models folder next to it, and (`with_data`) its dataset. Returns (config.yml, config, checkpoint)."""
    file, config = read_run_config(path, flag)
    models = file.parent / "nerfstudio_models"
    if not models.is_dir():
        raise UserError(f"run '{file.parent}' has no nerfstudio_models folder; did its training save a checkpoint?")
    checkpoint, _ = find_checkpoint(models, None, flag or f"'{file}'")
    if with_data:
        check_dataset(config.pipeline.datamanager)  # type: ignore[attr-defined]
    return file, config, checkpoint


def load_run(config_path: Path, test_mode: str = "test"):
    """A finished ed-nerf run's pipeline, as nerfstudio's eval_setup builds it, with the checkpoint taken from the
    nerfstudio_models folder next to config.yml (so a moved run still loads), read with weights_only=True and
    verified, and one-line errors instead of tracebacks."""
    from nerfstudio.configs.method_configs import all_methods

    _, config, checkpoint = check_run(config_path, with_data=test_mode != "inference")
    config.pipeline.datamanager._target = all_methods[config.method_name].pipeline.datamanager._target  # type: ignore
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline = config.pipeline.setup(device=device, test_mode=test_mode)  # type: ignore[attr-defined]
    pipeline.eval()
    state = read_checkpoint(checkpoint)
    pipeline.model.update_to_step(int(state.get("step", 0)))  # what nerfstudio's load_pipeline does first
    load_verified(pipeline, state["pipeline"], f"checkpoint '{checkpoint}'")
    return pipeline


@torch.no_grad()
def render_split(pipeline, split: str = "eval", limit: int | None = None) -> list[RenderedView]:
    """Render the views of one split (the held-out "eval" views by default) with their images and masks."""

    dm = pipeline.datamanager
    cached = dm.cached_eval if split == "eval" else dm.cached_train
    dataset = dm.eval_dataset if split == "eval" else dm.train_dataset
    views = []
    for idx, data in enumerate(cached[:limit]):
        camera = dataset.cameras[idx : idx + 1].to(pipeline.device)
        out = pipeline.model.get_outputs_for_camera(camera)
        mask = data["mask"][..., 0].cpu() if "mask" in data else None
        latent = latent_at_latent_resolution(out["latent"]).permute(2, 0, 1).cpu()
        name = Path(dataset.image_filenames[idx]).name
        image = image_float(data["image"].cpu())
        views.append(RenderedView(name, out["rgb"].cpu(), image, mask, latent, data["latent"].cpu()))
    return views


def save_png(image: Tensor | np.ndarray, path: Path) -> Path:
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else image
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def contact_sheet(rows: list[list[Tensor]], gap: int = 4) -> Tensor:
    """Images [H, W, 3] in a grid (each row one list), on white, all cells the size of the largest image."""
    height = max(img.shape[0] for row in rows for img in row)
    width = max(img.shape[1] for row in rows for img in row)
    cols = max(len(row) for row in rows)
    sheet = torch.ones(len(rows) * (height + gap) - gap, cols * (width + gap) - gap, 3)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            sheet[y : y + img.shape[0], x : x + img.shape[1]] = img.cpu().float()
    return sheet


def quiet_run(config, device: str, output_dir: Path, name: str, steps: int, seed: int) -> None:
    """Set up `config` (in place) for a run inside another command (demo, ablations): no viewer, no per-step
    table (the caller's progress bar replaces it), one checkpoint at the end."""
    config.machine.device_type = device
    config.machine.seed = seed
    config.vis = "tensorboard"
    config.output_dir = output_dir
    config.experiment_name = name
    config.max_num_iterations = steps
    config.steps_per_save = steps
    config.steps_per_eval_batch = steps + 1
    config.steps_per_eval_image = steps + 1
    config.steps_per_eval_all_images = steps + 1
    config.logging.local_writer.enable = False
    config.logging.profiler = "none"


def apply_overrides(config, overrides: dict[str, object]) -> None:
    """Set options of a TrainerConfig by dotted path, in place: {'pipeline.model.guidance_scale': 15,
    'optimizers.fields.optimizer.lr': 3e-3}. Dict entries (the optimizers) are indexed by key. An unknown path is
    refused, so that a mistyped benchmark variant never silently measures the defaults."""
    for path, value in overrides.items():
        *parents, last = path.split(".")
        target = config
        for name in parents:
            target = target[name] if isinstance(target, dict) else getattr(target, name, None)
            if target is None:
                raise UserError(f"option '{path}': no '{name}' in the run's config")
        if isinstance(target, dict):
            if last not in target:
                raise UserError(f"option '{path}': no '{last}' in the run's config")
            target[last] = value
        elif not hasattr(target, last):
            raise UserError(f"option '{path}': no '{last}' in the run's config")
        else:
            setattr(target, last, value)


def labelled_contact_sheet(rows: list[list[Tensor]], labels: list[str], path: Path, title: str | None = None) -> Path:
    """`contact_sheet` saved as PNG with each column's label (and an optional title line) on a white strip above.
    A label wider than its column wraps onto more lines (at most LABEL_LINES, the last cut with '…')."""
    from PIL import ImageDraw

    sheet = Image.fromarray((contact_sheet(rows).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    cell = max(img.shape[1] for row in rows for img in row) + 4
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    wrapped = [wrap_label(label, cell - 4, measure) for label in labels[: max(len(r) for r in rows)]]
    strip = LABEL_LINE * max(1, *(len(lines) for lines in wrapped)) + 4
    top = strip + (LABEL_LINE + 4 if title is not None else 0)
    labelled = Image.new("RGB", (sheet.width, sheet.height + top), "white")
    labelled.paste(sheet, (0, top))
    draw = ImageDraw.Draw(labelled)
    if title is not None:
        draw.text((2, 2), wrap_label(title, sheet.width - 4, measure, max_lines=1)[0], fill="black")
    for c, lines in enumerate(wrapped):
        for i, line in enumerate(lines):
            draw.text((c * cell + 2, top - strip + 2 + i * LABEL_LINE), line, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled.save(path, optimize=True)
    return path


LABEL_LINE = 12  # pixels per line of PIL's default font
LABEL_LINES = 3


def wrap_label(text: str, width: float, measure, max_lines: int = LABEL_LINES) -> list[str]:
    """`text` in lines no wider than `width` (as `measure` gives widths): broken between words, a word too long for a
    line cut with '…', and at most `max_lines` lines, the last cut with '…' when text is left over."""

    def fit(line: str) -> str:
        if measure(line) <= width:
            return line
        while line and measure(line + "…") > width:
            line = line[:-1]
        return line + "…"

    lines: list[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and measure(joined) <= width:
            lines[-1] = joined
        else:
            lines.append(word)
    lines = [fit(line) for line in lines] or [""]
    if len(lines) > max_lines:
        # greedy wrapping put the next word on a new line, so the joined rest never fits: it ends in '…'
        lines = [*lines[: max_lines - 1], fit(" ".join(lines[max_lines - 1 :]))]
    return lines
