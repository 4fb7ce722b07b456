"""Text-prompted edit masks with CLIPSeg (transformers), computed once per image and cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from ednerf_ns.errors import UserError, first_line
from ednerf_ns.ops.latent_grid import LATENT_SCALE


class TextSegmenter:
    """CLIPSeg probabilities for 'where is <prompt>' in an image."""

    def __init__(self, model: str, device: torch.device | str, cache_dir: Path | None = None) -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        self.model_name = model
        self.device = torch.device(device)
        try:
            self.processor = CLIPSegProcessor.from_pretrained(model)
            self.model = CLIPSegForImageSegmentation.from_pretrained(model).to(self.device).eval()
        except Exception as exc:
            reason = first_line(exc, 200)
            raise UserError(
                f"could not load the segmentation model '{model}' needed by --pipeline.model.mask-prompt: "
                f"{reason}; pass --pipeline.model.segmentation-model <local CLIPSeg folder>, or use the "
                f"dataset's masks / no mask instead"
            ) from None
        self.cache_dir = cache_dir
        self._model_key = hashlib.sha256(
            (model + json.dumps(self.model.config.to_dict(), sort_keys=True, default=str)).encode()
        ).hexdigest()[:16]

    @torch.no_grad()
    def latent_probabilities(self, image: Tensor, prompt: str) -> Tensor:
        """[H, W, 3] image in [0, 1] -> [1, H/8, W/8] probability that each latent pixel shows `prompt`."""
        key = hashlib.sha256(f"{self._model_key}:{prompt}:{tuple(image.shape)}".encode())
        key.update(image.detach().cpu().float().contiguous().numpy().tobytes())
        path = None if self.cache_dir is None else self.cache_dir / f"{key.hexdigest()[:32]}.safetensors"
        if path is not None and path.is_file():
            try:
                return load_file(str(path))["mask"].float()
            except Exception:  # a damaged cache entry is recomputed
                pass
        pixels = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        inputs = self.processor(text=[prompt], images=[pixels], padding=True, return_tensors="pt")
        logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
        logits = logits.reshape(1, 1, *logits.shape[-2:]).float()
        height, width = image.shape[:2]
        probs = torch.sigmoid(F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False))
        latent = F.avg_pool2d(probs, LATENT_SCALE)[0].cpu()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file({"mask": latent.half().contiguous()}, str(tmp))
            os.replace(tmp, path)
        return latent
