"""Whole-view datamanager that serves Stable Diffusion latents as training targets.

Per image, once: load (with a clear error naming a broken file), undistort (nerfstudio's helper), composite RGBA
over the scene background, resize so both sides are multiples of 8 (and the longer side at most
`max_image_size`), update the camera intrinsics to match, VAE-encode (posterior mean x scaling factor) and cache
the latent on disk, keyed by the exact encoder input and the VAE's weights. Dataset masks are resized alongside
and area-averaged to latent resolution.

Images are read one at a time through nerfstudio's dataset (`get_data`, uint8) and undistortion
(`_undistort_image`), then resized at once, so a capture of hundreds of 4k photos never sits in memory at full
resolution. The dataparser is never allowed to write into the dataset (see `no_dataset_writes`).

Every batch is one whole view: `(camera at image resolution, data)` with
- `image`  [H, W, 3] uint8 on the CPU (the resized, composited image; no loss reads it: `image_float` for metrics),
- `latent` [4, H/8, W/8] float (the encoded target),
- `latent_mask` [1, H/8, W/8] float in [0, 1] (only if the dataset has masks),
- `mask` [H, W, 1] bool (only if the dataset has masks).
Cameras stay at image resolution everywhere (viewer, eval, render); the model divides by 8 itself.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.data.datamanagers.full_images_datamanager import (
    FullImageDatamanager,
    FullImageDatamanagerConfig,
    _undistort_image,
)
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.prompt import Confirm
from safetensors.torch import load_file, save_file
from torch import Tensor

from ednerf_ns import timeline
from ednerf_ns.errors import UserError, first_line
from ednerf_ns.models2d.diffusion import LatentDiffusion
from ednerf_ns.ops.latent_grid import downsample_mask, image_float, resize_image, resize_mask, target_size
from ednerf_ns.validate import check_dataset_path, config_data_path, read_image


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ednerf_ns"


@dataclass
class LatentDatamanagerConfig(FullImageDatamanagerConfig):
    """Serves whole views with their VAE latents; see the module docstring."""

    _target: type = field(default_factory=lambda: LatentDatamanager)
    max_image_size: int = 512
    """Resize images so the longer side is at most this many pixels before encoding (Stable Diffusion 1.x works at
    512). Both sides are then rounded to multiples of 8. 0 keeps the original size (rounded to multiples of 8)."""
    background_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1] that transparent pixels of RGBA images are composited over, when the dataparser sets none."""
    latent_cache: bool = True
    """Cache encoded latents on disk so a second run on the same images and VAE skips the encoder."""
    cache_dir: Path | None = None
    """Where the latent (and segmentation-mask) cache lives; default $XDG_CACHE_HOME/ednerf_ns or ~/.cache/ednerf_ns."""
    encode_batch_size: int = 8
    """Images per VAE encoder call."""
    cache_images: Literal["cpu", "gpu"] = "gpu"
    """Keep the latent targets (and latent masks) on the training device ("gpu", which means the CPU on a CPU run) or
    in CPU memory. Decoded images always stay in CPU memory as uint8 (no loss reads them)."""


class LatentInputDataset(InputDataset):
    """nerfstudio's InputDataset, reading images in every mode `ednerf_ns.validate.read_image` converts: nerfstudio's
    own loader would read a palette image's indices as gray levels, CMYK as RGBA and 16-bit gray modulo 256."""

    def get_numpy_image(self, image_idx: int):
        return read_image(self._dataparser_outputs.image_filenames[image_idx], self.scale_factor)


class LatentDatamanager(FullImageDatamanager[LatentInputDataset]):
    """FullImageDatamanager whose cached views carry VAE latents (and latent-resolution masks)."""

    config: LatentDatamanagerConfig

    def __init__(self, config: LatentDatamanagerConfig, device="cpu", test_mode="val", **kwargs) -> None:
        check_dataset_path(config)
        prepare_colmap_parser(config)
        self._diffusion: LatentDiffusion | None = None
        self.cache_stats: dict[str, tuple[int, int]] = {}
        """Per split: (latents read from the cache, latents encoded)."""
        try:
            with no_dataset_writes(config_data_path(config)):
                super().__init__(config, device=device, test_mode=test_mode, **kwargs)
        except (AssertionError, KeyError, ValueError, RuntimeError, FileNotFoundError, json.JSONDecodeError) as exc:
            raise UserError(describe_dataset_error(config_data_path(config), exc)) from None
        timeline.mark("dataset_read")

    def set_diffusion(self, diffusion: LatentDiffusion) -> None:
        """The VAE used to encode targets; must be set before the first batch is requested."""
        self._diffusion = diffusion

    # ------------------------------------------------------------------ loading
    def _load_images(self, split: Literal["train", "eval"], cache_images_device: Literal["cpu", "gpu"]) -> list[dict]:
        dataset = self.train_dataset if split == "train" else self.eval_dataset
        cams = dataset.cameras
        if cams.distortion_params is not None:
            # nerfstudio's dataparsers share one distortion row between all cameras (an expanded tensor): zeroing
            # it for the first undistorted view would zero it for every view, which would then stay distorted.
            cams.distortion_params = cams.distortion_params.clone()
        # One view at a time (decode, undistort, resize): only the resized uint8 image is kept.
        with ThreadPoolExecutor(max_workers=2) as pool:
            items = list(pool.map(functools.partial(self._load_view, dataset), range(len(dataset))))
        self._attach_latents(items, split)
        target = self.device if cache_images_device == "gpu" else "cpu"
        for item in items:
            for key in ("latent", "latent_mask"):
                if key in item:
                    item[key] = item[key].to(target)
        if split == "train":
            self.train_cameras = self.train_dataset.cameras.to(self.device)
        return items

    def _load_view(self, dataset: InputDataset, idx: int) -> dict:
        filename = dataset.image_filenames[idx]
        camera = dataset.cameras[idx].reshape(())
        height, width = int(camera.height.item()), int(camera.width.item())
        try:
            with Image.open(filename) as header:  # reads the header only: check the size before the pixels
                size = header.size
            scale = dataset.scale_factor  # --pipeline.datamanager.camera-res-scale-factor resizes on load
            if (int(size[0] * scale), int(size[1] * scale)) != (width, height):
                raise UserError(
                    f"image '{filename}' is {size[0]}x{size[1]} but its camera says {width}x{height}; "
                    f"fix w/h in the dataset's camera parameters"
                )
            data = dataset.get_data(idx, image_type="uint8")
        except UserError:
            raise
        except Exception as exc:  # PIL and nerfstudio raise many kinds for a broken file
            reason = first_line(exc)
            raise UserError(
                f"could not load image '{filename}': {reason}; replace the file or remove its frame"
            ) from None
        if camera.distortion_params is not None and torch.any(camera.distortion_params != 0):
            K, image, mask = _undistort_image(
                camera,
                camera.distortion_params.numpy(),
                data,
                data["image"].numpy(),
                camera.get_intrinsics_matrices().numpy(),
            )
            data["image"] = torch.from_numpy(image)
            if mask is not None:
                data["mask"] = mask
            fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
            dataset.cameras.distortion_params[idx] = 0.0
        else:
            fx, fy, cx, cy = (float(v) for v in (camera.fx, camera.fy, camera.cx, camera.cy))
        image = image_float(data["image"])
        if image.shape[-1] == 4:  # RGBA that the dataparser did not composite
            image = image[..., :3] * image[..., 3:] + torch.tensor(self.config.background_color) * (1 - image[..., 3:])
        src_h, src_w = image.shape[:2]
        new_h, new_w = target_size(src_h, src_w, self.config.max_image_size)
        data["image"] = (resize_image(image, new_h, new_w) * 255.0).round().to(torch.uint8)
        if "mask" in data:
            data["mask"] = resize_mask(data["mask"], new_h, new_w)
        # Keep the camera consistent with the resized image: intrinsics scale with each axis.
        sx, sy = new_w / src_w, new_h / src_h
        cams = dataset.cameras
        cams.fx[idx], cams.cx[idx], cams.fy[idx], cams.cy[idx] = fx * sx, cx * sx, fy * sy, cy * sy
        cams.width[idx], cams.height[idx] = new_w, new_h
        return data

    def _attach_latents(self, items: list[dict], split: str) -> None:
        if self._diffusion is None:
            raise RuntimeError("LatentDatamanager.set_diffusion must be called before images are requested")
        diffusion = self._diffusion
        cache_dir = (self.config.cache_dir or default_cache_dir()) / "latents"
        vae_id = diffusion.fingerprint("vae")
        keys = [latent_cache_key(item["image"], vae_id) for item in items]
        todo: list[int] = []
        hits = 0
        for i, key in enumerate(keys):
            path = cache_dir / f"{key}.safetensors"
            if self.config.latent_cache and path.is_file():
                try:
                    items[i]["latent"] = load_file(str(path))["latent"]
                    hits += 1
                    continue
                except Exception:  # a truncated cache file is re-encoded, never trusted
                    pass
            todo.append(i)
        if todo:
            # Same-size images go through the encoder together.
            groups: dict[tuple[int, int], list[int]] = {}
            for i in todo:
                groups.setdefault(tuple(items[i]["image"].shape[:2]), []).append(i)
            with _progress() as progress:
                task = progress.add_task(f"VAE-encoding {split} images", total=len(todo))
                for indices in groups.values():
                    for start in range(0, len(indices), max(1, self.config.encode_batch_size)):
                        chunk = indices[start : start + self.config.encode_batch_size]
                        batch = image_float(torch.stack([items[i]["image"] for i in chunk])).permute(0, 3, 1, 2)
                        latents = diffusion.encode(batch).cpu()
                        for i, latent in zip(chunk, latents, strict=True):
                            items[i]["latent"] = latent.clone()
                            if self.config.latent_cache:
                                _atomic_save(latent, cache_dir / f"{keys[i]}.safetensors")
                        progress.advance(task, len(chunk))
        self.cache_stats[split] = (hits, len(todo))
        where = f" in {cache_dir}" if self.config.latent_cache else ""
        CONSOLE.log(f"Latent targets for {len(items)} {split} images: {hits} cache hits, {len(todo)} encoded{where}")
        for item in items:
            if "mask" in item:
                item["latent_mask"] = downsample_mask(item["mask"])

    def training_image_size(self) -> int:
        """The longest side (pixels) of the images the NeRF is trained on: the dataset's cameras resized as
        `_load_view` resizes them. Read from the cameras, so it needs no image (ns-render, ns-viewer)."""
        cams = self.train_dataset.cameras
        sizes = {(int(h), int(w)) for h, w in zip(cams.height.flatten(), cams.width.flatten(), strict=True)}
        return max(max(target_size(h, w, self.config.max_image_size)) for h, w in sizes)

    # ------------------------------------------------------------------ nerfstudio hooks
    def next_train(self, step: int):
        """nerfstudio's next view, with its image left in CPU memory: nerfstudio copies it to the device every step,
        but no training loss reads it, and a copy from pageable CPU memory makes the host wait for the GPU."""
        view = self.cached_train[self.train_unseen_cameras[0]]  # the view nerfstudio serves next
        image = view["image"]
        view["image"] = torch.empty(0, dtype=image.dtype, device=self.device)  # its copy to the device: a no-op
        try:
            camera, data = super().next_train(step)
        finally:
            view["image"] = image
        data["image"] = image
        return camera, data

    def get_train_rays_per_batch(self) -> int:
        """Rays per step: the latent view, 1/64 of the image's pixels."""
        h, w = self.cached_train[0]["latent"].shape[-2:]
        return int(h * w)


@contextlib.contextmanager
def no_dataset_writes(data: Path | None):
    """nerfstudio's dataparsers may ask (rich's Confirm) to write into the dataset: downscaled images_N folders
    (colmap), a point cloud and an updated transforms.json (nerfstudio). The user's dataset is only ever read: refuse
    in one line instead of asking."""
    original = Confirm.ask

    def refuse(prompt="", *args, **kwargs):
        question = " ".join(str(prompt).split())[:160]
        hint = ""
        if "downscale" in question:
            hint = (
                "; pass --downscale-factor 1 after the dataparser's name (ed-nerf resizes images itself) or "
                "create the images_N folder yourself"
            )
        elif "3D" in question:
            hint = "; pass --load-3D-points False after the dataparser's name"
        raise UserError(
            f"the dataparser wants to modify the dataset at '{data}' ({question}); ed-nerf never does{hint}"
        )

    Confirm.ask = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        Confirm.ask = original  # type: ignore[method-assign]


def prepare_colmap_parser(config: LatentDatamanagerConfig) -> None:
    """Colmap captures: find `sparse/0` when the default `colmap/sparse/0` is absent, and when no downscale factor
    is given, use the smallest existing images_N folder that still holds at least `max_image_size` pixels (else the
    full images) - never nerfstudio's automatic choice, which offers to write images_N into the dataset."""
    parser = config.dataparser
    data = config_data_path(config)
    if not isinstance(parser, ColmapDataParserConfig) or data is None or not Path(data).is_dir():
        return
    data = Path(data)
    if not (data / parser.colmap_path).exists() and (data / "sparse" / "0").is_dir():
        parser.colmap_path = Path("sparse/0")
    if parser.downscale_factor is not None:
        folder = data / f"{parser.images_path}_{parser.downscale_factor}"
        if parser.downscale_factor > 1 and not folder.is_dir():
            raise UserError(
                f"downscale factor {parser.downscale_factor} (colmap --downscale-factor), but '{folder}' does not "
                f"exist; ed-nerf never writes into the dataset: create it, or pass --downscale-factor 1"
            )
        return
    suffixes = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
    images = sorted(p for p in (data / parser.images_path).glob("*") if p.suffix.lower() in suffixes)
    factor = 1
    if images:
        try:
            with Image.open(images[0]) as first:
                longest = max(first.size)
        except Exception:  # an unreadable first image: nerfstudio's loading names it in one line later
            longest = 0
        for candidate in (2, 4, 8):
            folder = data / f"{parser.images_path}_{candidate}"
            if folder.is_dir() and config.max_image_size > 0 and longest / candidate >= config.max_image_size:
                factor = candidate
    parser.downscale_factor = factor
    CONSOLE.log(f"Colmap images: downscale factor {factor} ({parser.images_path}{'' if factor == 1 else f'_{factor}'})")


def describe_dataset_error(data: Path | None, exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        detail = f"transforms.json lacks the field {exc}"
    elif isinstance(exc, json.JSONDecodeError):
        detail = f"transforms.json is not valid JSON ({exc.msg} at line {exc.lineno})"
    else:
        detail = first_line(exc)
    if "No data found" in detail or "list index out of range" in detail:
        detail = "it lists no usable frames"
    return f"could not read the dataset at '{data}': {detail}"


def latent_cache_key(image: Tensor, vae_fingerprint: str) -> str:
    """Exact encoder input (pixels + resolution) and the VAE's weights."""
    digest = hashlib.sha256()
    digest.update(f"{vae_fingerprint}:{tuple(image.shape)}:{image.dtype}".encode())
    digest.update(image.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _atomic_save(latent: Tensor, path: Path) -> None:
    """Write then rename, so an interrupted run never leaves a half-written cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        save_file({"latent": latent.contiguous()}, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=CONSOLE,
    )
