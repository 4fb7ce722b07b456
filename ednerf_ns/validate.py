"""One validation pass per stage, before any heavy work: every input a stage reads, checked in one place.

- `check_options`: the numeric options of a trainer config (ranges, finiteness) -> `ArgumentError` (exit 2);
- `check_dataset`: a nerfstudio-format dataset (transforms.json, frames, every image and mask decoded) ->
  `UserError` (exit 1) naming the file;
- `check_same_cameras`: the edit's dataset against the one the source run was trained on.

Image modes the loader converts (`read_image`): 8-bit grayscale, bilevel, palette (with transparency), 16-bit
grayscale (scaled to 8 bits), CMYK, YCbCr, grayscale + alpha. Refused by name: float images and anything PIL cannot
convert to RGB.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ednerf_ns.errors import ArgumentError, UserError, first_line, warn

# ---------------------------------------------------------------------------------------------------------- options


def _flag(name: str, prefix: str) -> str:
    return f"--{prefix}{name.replace('_', '-')}"


def check_range(value, flag: str, *, low=None, high=None, low_open=False, high_open=False, hint: str = "") -> None:
    """Refuse a non-finite `value` or one outside [low, high] (open ends where asked), naming `flag`."""
    if value is None:
        return
    left = f"({low:g}" if low_open else f"[{low:g}" if low is not None else "(-inf"
    right = f"{high:g})" if high_open else f"{high:g}]" if high is not None else "inf)"
    bounds = f"{left}, {right}"
    bad = not math.isfinite(float(value))
    bad = bad or (low is not None and (value <= low if low_open else value < low))
    bad = bad or (high is not None and (value >= high if high_open else value > high))
    if bad:
        raise ArgumentError(f"{flag} {value} is outside {bounds}; {hint or f'pass a value in {bounds}'}")


MODEL_WEIGHTS = ("raw_loss_mult", "interlevel_loss_mult", "distortion_loss_mult", "orientation_loss_mult",
                 "pred_normal_loss_mult")  # fmt: skip
EDIT_WEIGHTS = ("guidance_weight", "guidance_clip", "reconstruction_weight")
MODEL_COUNTS = ("refinement_width", "refinement_blocks", "refinement_heads", "num_levels", "hidden_dim",
                "hidden_dim_color", "num_nerf_samples_per_ray", "log2_hashmap_size", "max_res", "base_res",
                "features_per_level")  # fmt: skip
TRAINER_COUNTS = ("max_num_iterations", "steps_per_save", "steps_per_eval_batch", "steps_per_eval_image",
                  "steps_per_eval_all_images", "max_bad_steps")  # fmt: skip


def check_device(device_type: str, flag: str = "--machine.device-type") -> None:
    """nerfstudio trains on CUDA by default: on a machine without it, say so instead of torch's traceback."""
    import torch

    if device_type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"{flag} cuda, but this machine has no usable CUDA GPU; pass {flag} cpu")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError(f"{flag} mps, but MPS is not available here; pass {flag} cpu")


def check_options(config) -> None:
    """Ranges of the numeric options of an ed-nerf / ed-nerf-edit trainer config (before anything is built)."""
    check_device(config.machine.device_type)
    if getattr(config.pipeline.model, "predict_normals", False):
        raise ArgumentError("--pipeline.model.predict-normals is not supported by ed-nerf; leave it off")
    for name in TRAINER_COUNTS:
        if hasattr(config, name):
            check_range(getattr(config, name), _flag(name, ""), low=1, hint="pass a whole number >= 1")
    check_range(config.logging.steps_per_log, "--logging.steps-per-log", low=1, hint="pass a whole number >= 1")
    for group, opt in config.optimizers.items():
        lr = getattr(opt.get("optimizer"), "lr", None)
        check_range(lr, f"--optimizers.{group}.optimizer.lr", low=0, low_open=True, hint="pass a learning rate > 0")
    dm = config.pipeline.datamanager
    check_range(dm.max_image_size, "--pipeline.datamanager.max-image-size", low=0, hint="pass 0 (no resize) or >= 8")
    check_range(dm.encode_batch_size, "--pipeline.datamanager.encode-batch-size", low=1, hint="pass 1 or more")
    check_range(dm.camera_res_scale_factor, "--pipeline.datamanager.camera-res-scale-factor", low=0, low_open=True)
    for i, c in enumerate(dm.background_color):
        check_range(c, f"--pipeline.datamanager.background-color (component {i + 1})", low=0, high=1)
    model = config.pipeline.model
    prefix = "pipeline.model."
    for name in MODEL_WEIGHTS + EDIT_WEIGHTS:
        if hasattr(model, name):
            check_range(getattr(model, name), _flag(name, prefix), low=0, hint="pass a weight >= 0")
    for name in MODEL_COUNTS:
        if hasattr(model, name):
            check_range(getattr(model, name), _flag(name, prefix), low=1, hint="pass a whole number >= 1")
    check_range(model.near_plane, "--pipeline.model.near-plane", low=0)
    check_range(model.far_plane, "--pipeline.model.far-plane", low=model.near_plane, low_open=True,
                hint="pass a far plane beyond --pipeline.model.near-plane")  # fmt: skip
    if hasattr(model, "guidance_scale"):
        check_edit_options(model)


def check_edit_options(model) -> None:
    """The editing options of an EdNerfEditModelConfig."""
    prefix = "pipeline.model."
    check_range(model.guidance_scale, "--pipeline.model.guidance-scale", low=0,
                hint="pass a classifier-free guidance scale >= 0 (7.5 is the usual one)")  # fmt: skip
    for name in ("t_min", "t_max"):
        check_range(getattr(model, name), _flag(name, prefix), low=0, high=1, low_open=True, high_open=True,
                    hint="pass a fraction of the diffusion schedule strictly between 0 and 1")  # fmt: skip
    if not model.t_min < model.t_max:
        raise ArgumentError(
            f"--pipeline.model.t-min {model.t_min} is not below --pipeline.model.t-max {model.t_max}; "
            "pass t-min < t-max (the defaults are 0.05 and 0.95)"
        )
    check_range(model.mask_threshold, "--pipeline.model.mask-threshold", low=0, high=1)
    check_range(model.mask_dilation, "--pipeline.model.mask-dilation", low=0, hint="pass 0 or more latent pixels")
    if not (model.prompt or "").strip():
        raise ArgumentError('the target prompt is empty; pass --prompt "what the edited scene should show"')
    if model.mask_source == "prompt" and not (model.mask_prompt or "").strip():
        raise ArgumentError(
            "--pipeline.model.mask-source prompt without a mask prompt; pass --pipeline.model.mask-prompt 'the region'"
        )


# ---------------------------------------------------------------------------------------------------------- images

_CONVERTIBLE = {"L", "1", "P", "CMYK", "YCbCr", "LA", "La", "PA", "RGBX", "RGBa", "HSV"}
_HIGH_BIT_GRAY = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def convert_to_rgb(image: Image.Image, path: Path | str) -> Image.Image:
    """An 8-bit RGB or RGBA version of `image` (decoded), or a UserError naming a mode that cannot be converted."""
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        image.load()
        return image
    if mode in _CONVERTIBLE:
        alpha = mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in image.info)
        return image.convert("RGBA" if alpha else "RGB")
    if mode in _HIGH_BIT_GRAY:  # 16-bit grayscale PNG/TIFF: scale its range to 8 bits
        values = np.asarray(image).astype(np.float64)
        top = 65535.0 if mode != "I" or values.max() <= 65535 else float(2**31 - 1)
        gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    raise UserError(
        f"image '{path}' has pixel mode {mode} ({'floating point' if mode == 'F' else 'not convertible'}), "
        "which ed-nerf cannot read; save it as an 8-bit RGB PNG or JPEG"
    )


def read_image(path: Path | str, scale_factor: float = 1.0) -> np.ndarray:
    """[H, W, 3 or 4] uint8 pixels of an image file in any mode `convert_to_rgb` accepts (what the dataset loads)."""
    with Image.open(path) as opened:
        image = convert_to_rgb(opened, path)
        if scale_factor != 1.0:
            size = (int(image.width * scale_factor), int(image.height * scale_factor))
            image = image.resize(size, resample=Image.Resampling.BILINEAR)
        return np.array(image, dtype=np.uint8)


def _check_image(path: Path, what: str, mask: bool = False) -> tuple[int, int]:
    """Decode one image (truncated and corrupt files fail here); the mode must be usable. Returns (width, height)."""
    try:
        with Image.open(path) as image:
            if mask:
                if image.mode not in ("1", "L", "P", "I", "I;16", "I;16L", "I;16B"):
                    raise UserError(
                        f"mask '{path}' is a {image.mode} image; masks must be single-channel (grayscale, white = "
                        "inside): save it as an 8-bit grayscale PNG"
                    )
                image.load()
            else:
                convert_to_rgb(image, path)
            return image.size
    except UserError:
        raise
    except Exception as exc:  # PIL raises many kinds for a broken file
        reason = first_line(exc)
        raise UserError(f"could not read {what} '{path}': {reason}; replace the file or remove its frame") from None


# ---------------------------------------------------------------------------------------------------------- datasets

INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


def transforms_file(data: Path) -> Path | None:
    """The transforms.json a nerfstudio dataparser reads for `data` (a folder or the file itself)."""
    if data.is_file() and data.suffix == ".json":
        return data
    file = data / "transforms.json"
    return file if file.is_file() else None


def read_transforms(file: Path) -> dict:
    """transforms.json as a dict with a non-empty list of frames, or a one-line UserError saying what is wrong."""
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(
            f"'{file}' is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix the file or "
            "write it again with ns-process-data"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"could not read '{file}': {first_line(exc)}; check the file") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise UserError(f"'{file}' has no \"frames\" list; a nerfstudio transforms.json lists one frame per image")
    if not meta["frames"]:
        raise UserError(f"'{file}' lists no frames; add the images' frames (ns-process-data writes them)")
    return meta


def check_frames(file: Path, meta: dict) -> list[tuple[Path, Path | None]]:
    """Every frame has an image path, a 4x4 pose and intrinsics; returns (image, mask) paths."""
    root = file.parent
    out = []
    for i, frame in enumerate(meta["frames"]):
        where = f"frame {i} of '{file}'"
        if not isinstance(frame, dict) or not frame.get("file_path"):
            raise UserError(f'{where} has no "file_path"; every frame names its image')
        matrix = frame.get("transform_matrix")
        try:
            pose = np.asarray(matrix, dtype=np.float64)
        except (TypeError, ValueError):
            pose = np.zeros(0)
        if pose.shape not in ((4, 4), (3, 4)) or not np.isfinite(pose).all():
            raise UserError(f'{where} has no valid "transform_matrix" (a 4x4 camera-to-world pose); fix that frame')
        for key in INTRINSICS:
            value = frame.get(key, meta.get(key))
            if value is None:
                raise UserError(f'{where} has no "{key}" (neither the frame nor the file sets it); add it')
            positive = key not in ("cx", "cy")
            if not isinstance(value, int | float) or not math.isfinite(value) or (positive and value <= 0):
                raise UserError(f'{where} has "{key}": {value!r}, which is not a positive number; fix it')
        mask = frame.get("mask_path")
        out.append((root / frame["file_path"], None if mask is None else root / mask))
    return out


def config_data_path(config) -> Path | None:
    """The dataset a LatentDatamanagerConfig reads: --data, else its dataparser's `data`."""
    return Path(config.data) if config.data is not None else getattr(config.dataparser, "data", None)


def check_dataset_path(config) -> None:
    """The dataset path of a LatentDatamanagerConfig: fail early, in one line, on the mistakes nerfstudio would answer
    with a traceback."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    data = config_data_path(config)
    if data is None or str(data) in ("", "."):
        if not Path("transforms.json").exists():
            raise ArgumentError("no dataset given; pass --data <folder with transforms.json and images>")
        return
    if not data.exists():
        raise ArgumentError(f"dataset '{data}' does not exist; pass --data <folder with transforms.json and images>")
    if data.is_file() and data.suffix != ".json":
        raise ArgumentError(f"dataset '{data}' is a file; pass --data <folder with transforms.json and images>")
    if isinstance(config.dataparser, NerfstudioDataParserConfig) and data.is_dir():
        if not (data / "transforms.json").is_file():
            raise UserError(
                f"dataset '{data}' has no transforms.json (camera poses); run ns-process-data on your images first, "
                f"or name another dataparser after the options (e.g. `... colmap`)"
            )


def check_dataset(datamanager_config, flag: str = "--data") -> None:
    """The dataset a stage reads: path, transforms.json, frames, and every image and mask decoded (one line each)."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    check_dataset_path(datamanager_config)
    data = config_data_path(datamanager_config) or Path(".")
    if not isinstance(datamanager_config.dataparser, NerfstudioDataParserConfig):
        return  # other formats are checked by their own parsers (errors wrapped by the datamanager)
    file = transforms_file(Path(data))
    if file is None:
        return
    meta = read_transforms(file)
    frames = check_frames(file, meta)
    missing = [str(img) for img, _ in frames if not img.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(frames)} frames in '{file}' name images that do not exist (e.g. '{missing[0]}'); "
            "restore the images or remove their frames"
        )
    parser = datamanager_config.dataparser
    exact = parser.downscale_factor in (None, 1)  # nerfstudio may pick a downscaled copy of big images
    for (image, mask), frame in zip(frames, meta["frames"], strict=True):
        size = _check_image(image, "image")
        camera = (int(frame.get("w", meta.get("w"))), int(frame.get("h", meta.get("h"))))
        if exact and max(size) <= 1600 and size != camera:
            raise UserError(
                f"image '{image}' is {size[0]}x{size[1]} but its camera in '{file}' says {camera[0]}x{camera[1]}; "
                "fix w/h in transforms.json or resize the image"
            )
        if mask is not None:
            if not mask.is_file():
                raise UserError(f"mask '{mask}' of image '{image}' does not exist; restore it or remove its mask_path")
            if _check_image(mask, "mask", mask=True) != size:
                raise UserError(f"mask '{mask}' is not the size of its image '{image}'; resize the mask")


# ------------------------------------------------------------------------------------------------- source vs edit


def describe_camera_difference(source: dict, edit: dict) -> str | None:
    """What differs between the frames (names, count, poses, intrinsics) of two transforms.json, or None."""

    def frames(meta: dict) -> dict[str, dict]:
        return {str(f["file_path"]): f for f in meta["frames"]}

    a, b = frames(source), frames(edit)
    if len(a) != len(b):
        return f"{len(a)} frames vs {len(b)}"
    only = sorted(set(a) ^ set(b))
    if only:
        return f"frame '{only[0]}' is in one dataset only"
    for name in sorted(a):
        pa, pb = (np.asarray(m["transform_matrix"], dtype=np.float64)[:3] for m in (a[name], b[name]))
        if not np.allclose(pa, pb, atol=1e-5, rtol=1e-5):
            return f"the pose of frame '{name}' differs"
        for key in INTRINSICS:
            va, vb = a[name].get(key, source.get(key)), b[name].get(key, edit.get(key))
            if va != vb:
                return f"{key} of frame '{name}' differs ({va} vs {vb})"
    return None


def check_same_cameras(source_data: Path | None, edit_data: Path | None) -> None:
    """An edit must see the cameras the source run was trained on (else the NeRF renders other views)."""
    if source_data is None or edit_data is None:
        return
    files = [transforms_file(Path(p)) if Path(p).exists() else None for p in (source_data, edit_data)]
    if None in files or files[0].resolve() == files[1].resolve():  # type: ignore[union-attr]
        return
    difference = describe_camera_difference(read_transforms(files[0]), read_transforms(files[1]))  # type: ignore
    if difference is not None:
        raise UserError(
            f"--data '{edit_data}' does not have the cameras of the source run's dataset '{source_data}' "
            f"({difference}); leave out --data to edit the source run's own dataset"
        )


def check_same_diffusion_model(edit_model: str, source) -> None:
    """The edit must use the diffusion model (VAE) the source run was trained with: its latents live in that VAE's
    latent space. `edit_model` is the edit's --pipeline.model.diffusion-model (the method's default = not set)."""
    from ednerf_ns.models2d.diffusion import DEFAULT_MODEL

    trained = str(getattr(source.config.pipeline.model, "diffusion_model", DEFAULT_MODEL))
    asked = str(edit_model)
    if asked == DEFAULT_MODEL or asked == trained:
        return  # not set: the edit takes the source run's model
    if Path(asked).expanduser().exists() and Path(trained).expanduser().exists():
        if Path(asked).expanduser().resolve() == Path(trained).expanduser().resolve():
            return
    if not Path(trained).expanduser().exists() and (Path(trained).is_absolute() or trained.startswith(".")):
        warn(f"the source run's diffusion model '{trained}' is gone; editing with '{asked}', which must be the same")
        return
    raise UserError(
        f"the source run was trained with diffusion model '{trained}' but --pipeline.model.diffusion-model is "
        f"'{asked}': their VAEs' latents are not interchangeable; leave the option out to use the source run's model"
    )
