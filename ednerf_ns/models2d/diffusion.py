"""Stable Diffusion components behind one small object.

`LatentDiffusion` loads the parts of a diffusers-layout Stable Diffusion checkpoint (hub id or local folder)
lazily and one at a time, so training, which needs only the VAE, never loads the UNet. It is deliberately *not*
an `nn.Module` and is never stored as a public attribute of a model or pipeline: that keeps Stable Diffusion's
weights out of nerfstudio checkpoints, out of `.to()` calls and out of the viewer's element scan.

Instances are shared per (model, device, dtype) through `get_diffusion`, so the datamanager (which encodes
images) and the model (which decodes renders and runs the UNet) use one copy of the weights.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ednerf_ns import timeline
from ednerf_ns.accel.unet_graph import UNetAcceleration, UNetRunner
from ednerf_ns.errors import UserError, first_line, warn

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DtypeName = Literal["auto", "float16", "bfloat16", "float32"]

# Hub ids that disappeared: point users at the live copy instead of a bare "not found".
_MOVED_IDS = {"runwayml/stable-diffusion-v1-5": DEFAULT_MODEL}
TILED_DECODE_ABOVE = 96 * 96  # latent pixels (a 768 x 768 image)
ENCODE_TILE = 512  # pixels: larger images are VAE-encoded in tiles of this size (SD's working size)
ENCODE_TILE_OVERLAP = 64  # pixels shared by neighbouring tiles, blended linearly
_PART_CLASSES = {
    "vae": ("diffusers", "AutoencoderKL"),
    "unet": ("diffusers", "UNet2DConditionModel"),
    "scheduler": ("diffusers", "DDPMScheduler"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "AutoTokenizer"),
}


def resolve_dtype(name: DtypeName, device: torch.device) -> torch.dtype:
    """fp16 on CUDA (the speed/memory the method is meant for), fp32 on CPU (fp16 CPU kernels are slow or absent)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def looks_like_path(model: str) -> bool:
    """A hub id is `org/name`; anything else with path syntax, or that exists on disk, is a folder."""
    if Path(model).expanduser().exists():
        return True
    return model.startswith(("/", "./", "../", "~", ".\\")) or model.count("/") > 1 or "\\" in model


class LatentDiffusion:
    """Lazily loaded VAE / UNet / text encoder / tokenizer / scheduler of one Stable Diffusion checkpoint."""

    def __init__(self, model: str, device: torch.device | str = "cpu", dtype: DtypeName = "auto") -> None:
        self.model = model
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._parts: dict[str, object] = {}
        self._embeddings: dict[str, Tensor] = {}
        # One lock per part: the viewer thread decodes while the trainer thread steps, and a prefetch thread may
        # be loading the UNet while the datamanager needs the VAE (which must not wait for it).
        self._part_locks = {part: threading.Lock() for part in _PART_CLASSES}
        self._warned_prompts: set[str] = set()
        self._unet_acceleration = UNetAcceleration()
        self._unet_runner: UNetRunner | None = None

    # ------------------------------------------------------------------ loading
    def _load(self, part: str):
        loaded = self._parts.get(part)
        if loaded is not None:
            return loaded
        with self._part_locks[part]:
            if part in self._parts:
                return self._parts[part]
            module_name, class_name = _PART_CLASSES[part]
            module = __import__(module_name, fromlist=[class_name])
            cls = getattr(module, class_name)
            source = self.model
            if looks_like_path(source):
                folder = Path(source).expanduser()
                if not folder.is_dir():
                    raise UserError(
                        f"diffusion model folder '{source}' does not exist; pass --pipeline.model.diffusion-model "
                        f"with a diffusers-layout folder (vae/, unet/, text_encoder/, tokenizer/, scheduler/) "
                        f"or a hub id such as {DEFAULT_MODEL}"
                    )
                if not (folder / part).is_dir():
                    raise UserError(
                        f"diffusion model folder '{source}' has no '{part}/' subfolder; it must be in diffusers "
                        f"layout (vae/, unet/, text_encoder/, tokenizer/, scheduler/)"
                    )
                source = str(folder)
            quiet_hf_logging()
            try:
                if part in ("scheduler", "tokenizer"):
                    obj = cls.from_pretrained(source, subfolder=part)
                else:
                    obj = self._load_weights(cls, source, part)
                    obj.requires_grad_(False)
                    obj.eval()
                    obj.to(self.device)
            except UserError:
                raise
            except Exception as exc:  # diffusers/transformers/hub raise many types for "not found"
                hint = ""
                if self.model in _MOVED_IDS:
                    hint = f" (that hub id was removed; use {_MOVED_IDS[self.model]})"
                reason = first_line(exc)
                raise UserError(
                    f"could not load the '{part}' of diffusion model '{self.model}'{hint}: {reason}; "
                    f"pass --pipeline.model.diffusion-model with a local diffusers-layout folder, or a hub id this "
                    f"machine can reach (e.g. {DEFAULT_MODEL})"
                ) from None
            self._parts[part] = obj
            timeline.mark(f"loaded {part}")
            return obj

    def _load_weights(self, cls, source: str, part: str):
        """from_pretrained, also for a snapshot that holds only the fp16 variant files (`*.fp16.safetensors`, what
        `variant="fp16"` downloads), which diffusers/transformers do not pick by themselves."""
        variant = weights_variant(Path(source) / part) if looks_like_path(source) else None
        try:
            return cls.from_pretrained(source, subfolder=part, torch_dtype=self.dtype, variant=variant)
        except (OSError, ValueError):
            if variant is not None or looks_like_path(source):
                raise
            # a hub id whose cached snapshot has only the fp16 files
            return cls.from_pretrained(source, subfolder=part, torch_dtype=self.dtype, variant="fp16")

    @property
    def vae(self):
        return self._load("vae")

    @property
    def unet(self):
        return self._load("unet")

    @property
    def text_encoder(self):
        return self._load("text_encoder")

    @property
    def tokenizer(self):
        return self._load("tokenizer")

    @property
    def scheduler(self):
        return self._load("scheduler")

    def prefetch(self, parts: tuple[str, ...]) -> threading.Thread:
        """Load `parts` in a background thread, so that reading model files overlaps the caller's own setup (the
        dataset, its latents, the source checkpoint). A part needed before the thread reaches it is loaded by the
        caller as usual (each part loads once); a part that fails to load here is left for the caller, whose own
        load reports the error."""

        def load() -> None:
            for part in parts:
                if not threading.main_thread().is_alive():
                    return  # the command ended early (bad input, Ctrl-C): stop after the part in hand
                try:
                    self._load(part)
                except (Exception, SystemExit):  # UserError is a SystemExit: no traceback from this thread
                    return

        # Not a daemon: Python waits for it at exit. A daemon thread still inside torch's C++ loading code when
        # the interpreter finalizes aborts the process ("terminate called without an active exception", exit
        # status -6) after a command had already failed with its one line.
        thread = threading.Thread(target=load, name="ednerf-prefetch", daemon=False)
        thread.start()
        return thread

    def loaded_parts(self) -> list[str]:
        """Names of the parts loaded so far (used to prove that viewing never loads the UNet)."""
        return sorted(p for p in self._parts if p in _PART_CLASSES)

    # ------------------------------------------------------------------ identity
    def fingerprint(self, part: str = "vae") -> str:
        """A short content hash of one loaded part (config, dtype and weights), for cache keys.

        Hashing the weights rather than the name means a re-trained or replaced model never reuses stale latents,
        whether it came from a folder or the hub cache; fp16 and fp32 loads encode slightly differently, so the
        dtype is part of the key too.
        """
        key = f"fingerprint:{part}"
        if key not in self._parts:
            module = self._load(part)
            # keys like _name_or_path say where the files were, not what they are
            config = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
            digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
            digest.update(str(self.dtype).encode())
            for name, tensor in module.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._parts[key] = digest.hexdigest()[:16]
        return self._parts[key]  # type: ignore[return-value]

    # ------------------------------------------------------------------ VAE
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        shift = getattr(self.vae.config, "shift_factor", None)
        return float(shift) if shift is not None else 0.0

    @torch.no_grad()
    def encode(self, images: Tensor, tile: int = ENCODE_TILE, overlap: int = ENCODE_TILE_OVERLAP) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> latents [B, 4, H/8, W/8] (posterior mean, scaled), float32.

        Images with more than tile x tile pixels are encoded in overlapping tiles of that size (the encoder's
        activations at 1-4k px need many GB), blended linearly across each overlap; tile <= 0 never tiles.
        """
        x = (images.to(self.device, self.dtype) * 2.0 - 1.0).clamp(-1.0, 1.0)
        height, width = x.shape[-2:]
        if tile <= 0 or height * width <= tile * tile:
            return self._encode_mean(x)
        ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
        out = weight = None
        for y in ys:
            for x0 in xs:
                part = self._encode_mean(x[..., y : y + tile, x0 : x0 + tile])
                h, w = part.shape[-2:]
                ramp = (
                    blend_ramp(h, y > 0, y + tile < height, overlap // 8)[:, None]
                    * blend_ramp(w, x0 > 0, x0 + tile < width, overlap // 8)[None, :]
                )
                if out is None:
                    out = part.new_zeros(*part.shape[:2], height // 8, width // 8)
                    weight = part.new_zeros(height // 8, width // 8)
                ly, lx = y // 8, x0 // 8
                out[..., ly : ly + h, lx : lx + w] += part * ramp.to(part)
                weight[ly : ly + h, lx : lx + w] += ramp.to(part)
        assert out is not None and weight is not None
        return (out / weight).contiguous()

    def _encode_mean(self, x: Tensor) -> Tensor:
        mean = self.vae.encode(x).latent_dist.mean
        return ((mean.float() - self.shift_factor) * self.scaling_factor).contiguous()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, 4, h, w] -> images [B, 3, 8h, 8w] in [0, 1], float32."""
        vae = self.vae
        z = latents.to(self.device, self.dtype) / self.scaling_factor + self.shift_factor
        if z.shape[-2] * z.shape[-1] > TILED_DECODE_ABOVE:
            # A 1080p render decoded in one piece needs several GB of activations in SD's decoder;
            # diffusers' tiled decoder blends overlapping tiles instead.
            image = vae.tiled_decode(z).sample.float()
        else:
            image = vae.decode(z).sample.float()
        return ((image + 1.0) * 0.5).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ text
    def embed(self, prompts: list[str]) -> Tensor:
        """Text embeddings [B, L, D] in the UNet's dtype; each distinct prompt is encoded once and cached."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        if missing:
            tokenizer = self.tokenizer
            max_length = self.max_tokens
            for prompt in missing:
                self._warn_if_truncated(prompt, max_length)
            ids = tokenizer(
                missing, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            with torch.no_grad():
                hidden = self.text_encoder(ids)[0].to(self.dtype)
            for prompt, emb in zip(missing, hidden, strict=True):
                self._embeddings[prompt] = emb
        return torch.stack([self._embeddings[p] for p in prompts])

    @property
    def max_tokens(self) -> int:
        """The prompt length the text encoder takes (77 for SD). A tokenizer saved without model_max_length
        reports a huge sentinel, so fall back to the encoder's position count."""
        length = int(self.tokenizer.model_max_length)
        if length > 100_000:
            length = int(self.text_encoder.config.max_position_embeddings)
        return length

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, truncation=False).input_ids)

    def _warn_if_truncated(self, prompt: str, max_length: int) -> None:
        n = self.count_tokens(prompt)
        if n > max_length and prompt not in self._warned_prompts:
            self._warned_prompts.add(prompt)
            ids = self.tokenizer(prompt, truncation=True, max_length=max_length).input_ids
            kept = self.tokenizer.decode(ids, skip_special_tokens=True)
            warn(
                f"prompt '{prompt[:60]}...' has {n} tokens, more than the tokenizer's {max_length}; it was "
                f"truncated to '{kept}'"
            )

    # ------------------------------------------------------------------ UNet
    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def alphas_cumprod(self) -> Tensor:
        """The noise schedule's cumulative alphas on the device, float32."""
        if "alphas_cumprod" not in self._parts:
            self._parts["alphas_cumprod"] = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        return self._parts["alphas_cumprod"]  # type: ignore[return-value]

    @property
    def prediction_type(self) -> str:
        return str(getattr(self.scheduler.config, "prediction_type", "epsilon"))

    def set_unet_acceleration(self, options: UNetAcceleration) -> None:
        """How `predict_noise` runs the UNet on CUDA: CUDA-graph replay, torch.compile, channels_last (see
        ednerf_ns.accel.unet_graph). Takes effect at the next call and never loads the UNet by itself."""
        if options != self._unet_acceleration:
            self._unet_acceleration = options
            self._unet_runner = None

    @property
    def unet_runner(self) -> UNetRunner:
        """The object that calls the UNet (built on first use, with the current acceleration options)."""
        if self._unet_runner is None:
            self._unet_runner = UNetRunner(self.unet, self._unet_acceleration)
        return self._unet_runner

    @torch.no_grad()
    def predict_noise(self, noisy: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
        """The UNet's noise estimate eps(x_t, t, c) as float32, converting v-prediction models (SD 2.x 768)."""
        out = self.unet_runner(noisy.to(self.dtype), t, embeddings.to(self.dtype)).float()
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod()[t].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * noisy.float()
        elif self.prediction_type != "epsilon":
            raise UserError(
                f"diffusion model '{self.model}' predicts '{self.prediction_type}'; only epsilon and "
                f"v_prediction models are supported"
            )
        return out


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_variant(folder: Path) -> str | None:
    """ "fp16" when `folder` holds only fp16 variant weights (e.g. diffusion_pytorch_model.fp16.safetensors,
    model.fp16.safetensors, sharded or not), else None (the plain files load as usual)."""
    files = [f.name for f in folder.glob("*") if f.name.endswith(WEIGHT_SUFFIXES) or ".index." in f.name]
    plain = [f for f in files if ".fp16." not in f]
    return "fp16" if files and not plain else None


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets (multiples of 8) of tiles of `tile` pixels covering `size`, overlapping by at least `overlap`."""
    if size <= tile:
        return [0]
    stride = max(8, (tile - overlap) // 8 * 8)
    starts = list(range(0, size - tile, stride))
    return starts + [(size - tile) // 8 * 8]


def blend_ramp(length: int, ramp_start: bool, ramp_end: bool, overlap: int) -> Tensor:
    """Per-pixel blend weights of one tile along one axis: rising over `overlap` latent pixels at an edge shared
    with a neighbour tile, 1 elsewhere (never 0, so every pixel has weight)."""
    weights = torch.ones(length)
    ramp = (torch.arange(overlap, dtype=torch.float32) + 1) / (overlap + 1)
    if overlap > 0 and ramp_start:
        weights[:overlap] = ramp
    if overlap > 0 and ramp_end:
        weights[length - overlap :] = ramp.flip(0)
    return weights


def quiet_hf_logging() -> None:
    """diffusers/transformers print per-load progress bars and advice (e.g. to install accelerate) that are noise
    in a training log; errors still surface as exceptions."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


_REGISTRY: dict[tuple[str, str, str], LatentDiffusion] = {}
_REGISTRY_LOCK = threading.Lock()


def get_diffusion(model: str, device: torch.device | str, dtype: DtypeName = "auto") -> LatentDiffusion:
    """The shared `LatentDiffusion` for this model, device and dtype."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        # "cuda" and "cuda:0" are one device: one key, or a second copy of the UNet would be loaded (seen: 2 GB)
        device = torch.device("cuda", torch.cuda.current_device())
    key = (model, str(device), dtype)
    with _REGISTRY_LOCK:
        if key not in _REGISTRY:
            _REGISTRY[key] = LatentDiffusion(model, device, dtype)
        return _REGISTRY[key]


def release_all() -> None:
    """Forget every shared `LatentDiffusion` (frees their weights once nothing else holds them)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
