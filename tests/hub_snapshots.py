"""Hub-snapshot-shaped Stable Diffusion folders with random weights: SD 1.5 and SD 2.x (v-prediction) layouts.

The folders are what `huggingface_hub.snapshot_download(..., variant="fp16")` leaves for those repositories: a
model_index.json naming every component, configs with the true layer layout (block types, layers per block,
attention heads, 12 / 23 text-encoder layers, linear projections for 2.x), weights only as fp16 variants
(`diffusion_pytorch_model.fp16.safetensors`, `model.fp16.safetensors`), the tokenizer as vocab.json, merges.txt,
special_tokens_map.json and tokenizer_config.json (the hub's slow-tokenizer files, no tokenizer.json), and the
pipeline's own scheduler class (PNDM for 1.5, DDIM with v_prediction for 2.1). Only the widths are reduced.
The safety checker's weights are left out (the method never loads it).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ednerf_ns.demo.tiny_sd import build_vocab

_ADDED = {"__type": "AddedToken", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

SD15 = {
    "index": {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.6.0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "scheduler": {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
    },
    "unet": {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [32, 32, 64, 64],  # SD 1.5: [320, 640, 1280, 1280]
        "center_input_sample": False,
        "cross_attention_dim": 48,  # SD 1.5: 768
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    },
    "vae": {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [32, 32, 64, 64],  # SD 1.5: [128, 256, 512, 512]
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
    "text_encoder": {  # CLIP ViT-L/14's text tower: 12 layers, 12 heads (width 768 -> 48)
        "architectures": ["CLIPTextModel"],
        "hidden_act": "quick_gelu",
        "hidden_size": 48,
        "intermediate_size": 192,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "projection_dim": 48,
        "torch_dtype": "float16",
    },
    "pad_token": "<|endoftext|>",
}

SD21 = copy.deepcopy(SD15)
SD21["index"]["scheduler"] = ["diffusers", "DDIMScheduler"]
SD21["scheduler"].update(_class_name="DDIMScheduler", prediction_type="v_prediction")
del SD21["scheduler"]["skip_prk_steps"]
SD21["unet"].update(
    attention_head_dim=[2, 2, 4, 4],  # SD 2.x: [5, 10, 20, 20]
    use_linear_projection=True,
    upcast_attention=True,
    sample_size=96,
)
SD21["vae"]["sample_size"] = 768
SD21["text_encoder"].update(  # OpenCLIP ViT-H's text tower as converted: 23 layers, 16 heads, gelu (1024 -> 48)
    hidden_act="gelu", num_attention_heads=16, num_hidden_layers=23, intermediate_size=96, projection_dim=32
)
SD21["pad_token"] = "!"


def write_snapshot(out: Path, layout: dict = SD15, seed: int = 0) -> Path:
    """Write one snapshot folder (random weights, fp16 files only) and return it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out.mkdir(parents=True, exist_ok=True)
    (out / "model_index.json").write_text(json.dumps(layout["index"], indent=2))
    _write_json(out / "scheduler" / "scheduler_config.json", layout["scheduler"])
    _write_json(
        out / "feature_extractor" / "preprocessor_config.json",
        {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True, "size": 224},
    )
    vocab = _write_tokenizer(out / "tokenizer", layout["pad_token"])
    torch.manual_seed(seed)
    for name, module in (
        ("unet", UNet2DConditionModel(**_args(layout["unet"]))),
        ("vae", AutoencoderKL(**_args(layout["vae"]))),
    ):
        torch.nn.Module.to(module, torch.float16).save_pretrained(out / name, variant="fp16")
    text = {k: v for k, v in layout["text_encoder"].items() if k not in ("architectures", "model_type", "torch_dtype")}
    ids = {k: vocab[t] for k, t in (("bos", "<|startoftext|>"), ("eos", "<|endoftext|>"), ("pad", layout["pad_token"]))}
    config = CLIPTextConfig(**text, vocab_size=len(vocab), bos_token_id=ids["bos"], eos_token_id=ids["eos"])
    config.pad_token_id = ids["pad"]
    CLIPTextModel(config).to(torch.float16).save_pretrained(out / "text_encoder", variant="fp16")
    return out


def _args(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _write_tokenizer(folder: Path, pad_token: str) -> dict[str, int]:
    """The four files of the hub's SD tokenizer folders (a small vocabulary); returns the vocabulary."""
    vocab, merges = build_vocab()
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {
        "bos_token": {**_ADDED, "content": "<|startoftext|>"},
        "eos_token": {**_ADDED, "content": "<|endoftext|>"},
        "unk_token": {**_ADDED, "content": "<|endoftext|>"},
    }
    _write_json(
        folder / "special_tokens_map.json", {k: v["content"] for k, v in special.items()} | {"pad_token": pad_token}
    )
    _write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            **special,
            "do_lower_case": True,
            "errors": "replace",
            "model_max_length": 77,
            "name_or_path": "openai/clip-vit-large-patch14",
            "pad_token": pad_token if pad_token == "!" else {**_ADDED, "content": pad_token},
            "special_tokens_map_file": "./special_tokens_map.json",
            "tokenizer_class": "CLIPTokenizer",
        },
    )
    return vocab
