"""Stable Diffusion 1.5 at its real size without a download: the architecture with random weights, written in
diffusers layout; and counters of a UNet call's FLOPs and written bytes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from ednerf_ns.bench.gpu.timing import r3, release_memory

# Stable Diffusion 1.5's architecture (see DESIGN.md "Stable Diffusion 1.5 architecture"); random weights.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


class OutputBytes(TorchDispatchMode):
    """Bytes of the new tensors every op writes (views and in-place results excluded): the intermediate traffic
    of an unfused, eager forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False):
            return out
        leaves = pytree.tree_leaves((args, kwargs))
        inputs = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, Tensor)}
        for t in pytree.tree_leaves(out):
            if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.bytes += t.numel() * t.element_size()
        return out


def flops_on_meta(unet_config: dict, sample: tuple[int, ...], text: tuple[int, ...]) -> int:
    """FLOPs of one UNet call counted on the meta device: shapes only, no memory, no compute, so it runs anywhere
    in a second. There attention runs as explicit matrix products, which the counter always sees (a fused attention
    kernel may be missing from its tables: e.g. the CPU's flash kernel)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config).half()
        x = torch.empty(*sample, dtype=torch.float16)
        t = torch.zeros(sample[0], dtype=torch.long)
        c = torch.empty(*text, dtype=torch.float16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=c, return_dict=False)
    return int(counter.get_total_flops())


def build_sd15(out: Path, device: torch.device, seed: int) -> dict[str, Any]:
    """Random-weight SD 1.5 (UNet, VAE, CLIP text encoder) in diffusers layout at `out`, fp16.

    The modules are created on `device` (initialising 1 B parameters on a GPU takes a second, on a CPU much
    longer); the tokenizer is the tiny model's (its ids are valid for the 49408-token text encoder).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ednerf_ns.demo.tiny_sd import TinySD, build_tokenizer, save_model, scheduler_config

    t0 = time.perf_counter()
    tokenizer = build_tokenizer(out)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET).half()
        vae = AutoencoderKL(**SD15_VAE).half()
        text = CLIPTextConfig(
            **SD15_TEXT,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
        text_encoder = CLIPTextModel(text).half()
    if device.type == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scheduler = DDPMScheduler(**scheduler_config())
    models = TinySD(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
    save_model(models, out, dtype=torch.float16)
    save_s = time.perf_counter() - t0
    del models, unet, vae, text_encoder
    release_memory()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"build_s": r3(build_s), "save_s": r3(save_s), "folder_bytes": size}
