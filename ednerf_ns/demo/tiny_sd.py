"""The tiny text-to-image latent diffusion model of the demo: architecture, tokenizer and diffusers folder layout.

The model is Stable Diffusion 1.x in miniature (AutoencoderKL with factor-8 downsampling and 4 latent channels,
UNet2DConditionModel with cross-attention on a CLIP text encoder, DDPM scaled-linear schedule, epsilon prediction),
saved in the diffusers folder layout, so code written for SD 1.5 (`from_pretrained(path, subfolder=...)`) runs on it
unchanged.
Only long-standing config arguments are used so folders written here load in diffusers 0.35 .. 0.42 and
transformers 5.x.

Heavy libraries (diffusers, transformers) are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

# Words that become single tokens. Caption vocabulary first, then common extras for edit prompts.
CAPTION_WORDS: tuple[str, ...] = (
    # articles, glue
    "a", "an", "on", "the", "with", "and", "next", "to", "of", "in", "at", "made", "is", "it", "its", "photo", "render",
    "scene", "object", "left", "right", "behind", "front", "top", "floor", "ground", "table",
    # palette and other colours
    "red", "green", "blue", "yellow", "purple", "orange", "gold", "golden", "white", "black", "pink", "gray", "grey",
    "brown", "cyan", "magenta", "violet", "silver", "dark", "light", "bright", "colored", "coloured",
    # shapes
    "sphere", "cube", "cylinder", "ball", "box", "cone", "pyramid", "torus", "block", "can", "tube",
    # floors and materials
    "checkered", "checker", "wooden", "wood", "tiled", "tile", "tiles", "marble", "stone", "grass", "carpet", "metal",
    "metallic", "glass", "plastic", "rubber", "shiny", "matte", "glossy", "striped", "dotted",
    # sizes
    "small", "large", "big", "tiny", "huge", "tall", "short", "round",
)  # fmt: skip

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE with a tiny merge table


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable unicode character table used by byte-level BPE (GPT-2 / CLIP convention): printable
    Latin-1 bytes map to themselves, the remaining bytes to code points 256 and up, so every byte has a visible
    symbol."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {}
    extra = 0
    for byte in range(256):
        if byte in keep:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _word_symbols(word: str, byte_map: dict[int, str]) -> list[str]:
    syms = [byte_map[b] for b in word.encode("utf-8")]
    syms[-1] = syms[-1] + "</w>"
    return syms


def learn_merges(words: tuple[str, ...] = CAPTION_WORDS) -> list[tuple[str, str]]:
    """Learn BPE merges on `words` until each is one symbol. Each step merges the most frequent adjacent pair
    (ties: lexicographically smallest), the rule BPE encoding replays by merge rank, so every word in `words`
    encodes to exactly one token."""
    byte_map = bytes_to_unicode()
    seqs = [_word_symbols(w.lower(), byte_map) for w in dict.fromkeys(words)]
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for s in seqs:
            for pair in zip(s[:-1], s[1:], strict=False):
                counts[pair] += 1
        if not counts:
            return merges
        best_count = max(counts.values())
        best = min(p for p, c in counts.items() if c == best_count)
        merges.append(best)
        new_seqs = []
        for s in seqs:
            out: list[str] = []
            i = 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new_seqs.append(out)
        seqs = new_seqs


def build_vocab(words: tuple[str, ...] = CAPTION_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (CLIP order: 256 byte symbols, the same with "</w>", merged symbols, then BOS and EOS) and merges."""
    byte_map = bytes_to_unicode()
    base = [byte_map[b] for b in range(256)]
    tokens = base + [s + "</w>" for s in base]
    merges = learn_merges(words)
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer(out_dir: Union[str, Path], words: tuple[str, ...] = CAPTION_WORDS) -> CLIPTokenizer:
    """Write a small-vocabulary CLIPTokenizer to `out_dir/tokenizer` and return it (loaded back from there).

    Any text tokenizes (unknown words fall back to byte-level pieces); words in `words` are single tokens.
    Padding uses the end-of-text token, like SD 1.x; model_max_length is 77.
    """
    from transformers import CLIPTokenizer

    folder = Path(out_dir) / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    # The loaders skip the first line of merges.txt (a version header).
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_txt, encoding="utf-8")
    tok = CLIPTokenizer.from_pretrained(
        str(folder),
        model_max_length=MODEL_MAX_LENGTH,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    tok.save_pretrained(str(folder))
    return CLIPTokenizer.from_pretrained(str(folder))


# ----------------------------------------------------------------------------------------------------------------------
# Architecture presets


@dataclass(frozen=True)
class TinySDPreset:
    """Sizes of one tiny SD variant."""

    vae_channels: tuple[int, ...]
    """AutoencoderKL block_out_channels (4 levels = 3 downsamples = factor 8)."""
    vae_layers_per_block: int
    """ResNet blocks per VAE level."""
    vae_norm_groups: int
    """GroupNorm groups in the VAE (must divide every VAE channel count)."""
    unet_channels: tuple[int, ...]
    """UNet2DConditionModel block_out_channels."""
    unet_layers_per_block: int
    """ResNet (+ transformer) layers per UNet down level (up levels get one more, as in diffusers)."""
    unet_cross_attn_levels: tuple[bool, ...]
    """Per UNet level (highest resolution first): cross-attention blocks or plain ResNet blocks."""
    unet_heads: int
    """UNet `attention_head_dim`, which diffusers uses as the number of heads."""
    unet_norm_groups: int
    """GroupNorm groups in the UNet."""
    text_hidden: int
    """CLIP text encoder width (= UNet cross_attention_dim)."""
    text_layers: int
    """CLIP text encoder depth."""
    text_heads: int
    """CLIP text encoder attention heads."""
    image_size: int = 128
    """Pixel resolution the model is trained for (latents are image_size / 8)."""


PRESETS: dict[str, TinySDPreset] = {
    # The shipped model: about 11.6 M parameters, 23 MB in fp16 (budget 25 MB).
    "embedded": TinySDPreset(
        vae_channels=(32, 64, 96, 96),
        vae_layers_per_block=1,
        vae_norm_groups=16,
        unet_channels=(64, 128, 160),
        unet_layers_per_block=1,
        unet_cross_attn_levels=(True, True, True),
        unet_heads=8,
        unet_norm_groups=32,
        text_hidden=96,
        text_layers=3,
        text_heads=4,
    ),
    # Random-weight model for CPU unit tests (about 0.11 M parameters).
    "test": TinySDPreset(
        vae_channels=(8, 8, 8, 8),
        vae_layers_per_block=1,
        vae_norm_groups=4,
        unet_channels=(8, 16),
        unet_layers_per_block=1,
        unet_cross_attn_levels=(True, True),
        unet_heads=2,
        unet_norm_groups=4,
        text_hidden=16,
        text_layers=1,
        text_heads=2,
    ),
}

SD_SCALING_FACTOR = 0.18215  # placeholder until measured from data (SD 1.x's value)


def get_preset(preset: Union[str, TinySDPreset]) -> TinySDPreset:
    if isinstance(preset, TinySDPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[preset]


def vae_config(preset: Union[str, TinySDPreset], scaling_factor: float = SD_SCALING_FACTOR) -> dict[str, Any]:
    p = get_preset(preset)
    n = len(p.vae_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(p.vae_channels),
        "layers_per_block": p.vae_layers_per_block,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": p.vae_norm_groups,
        "sample_size": p.image_size,
        "scaling_factor": float(scaling_factor),
    }


def unet_config(preset: Union[str, TinySDPreset]) -> dict[str, Any]:
    p = get_preset(preset)
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in p.unet_cross_attn_levels]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(p.unet_cross_attn_levels)]
    return {
        "sample_size": p.image_size // 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": list(p.unet_channels),
        "layers_per_block": p.unet_layers_per_block,
        "cross_attention_dim": p.text_hidden,
        "attention_head_dim": p.unet_heads,
        "norm_num_groups": p.unet_norm_groups,
    }


def text_encoder_config(preset: Union[str, TinySDPreset], vocab_size: int, bos_id: int, eos_id: int) -> dict[str, Any]:
    """Keyword arguments of transformers.CLIPTextConfig."""
    p = get_preset(preset)
    return {
        "vocab_size": vocab_size,
        "hidden_size": p.text_hidden,
        "intermediate_size": 4 * p.text_hidden,
        "projection_dim": p.text_hidden,
        "num_hidden_layers": p.text_layers,
        "num_attention_heads": p.text_heads,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "hidden_act": "quick_gelu",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
    }


def scheduler_config() -> dict[str, Any]:
    """DDPMScheduler arguments matching SD 1.x training (1000 steps, scaled-linear betas 0.00085..0.012, epsilon)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "clip_sample": False,
        "steps_offset": 1,
    }


@dataclass
class TinySD:
    """The five components in memory."""

    vae: AutoencoderKL
    """Image <-> latent autoencoder."""
    unet: UNet2DConditionModel
    """Noise predictor."""
    text_encoder: CLIPTextModel
    """Prompt encoder (last hidden state feeds the UNet's cross-attention)."""
    tokenizer: CLIPTokenizer
    """Small-vocabulary CLIP tokenizer."""
    scheduler: DDPMScheduler
    """Training noise schedule."""


def build_models(
    preset: Union[str, TinySDPreset],
    tokenizer: CLIPTokenizer,
    seed: int = 0,
    scaling_factor: float = SD_SCALING_FACTOR,
) -> TinySD:
    """Random-weight components for `preset` (deterministic for a seed)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config(preset, scaling_factor))
    unet = UNet2DConditionModel(**unet_config(preset))
    te_cfg = text_encoder_config(preset, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    scheduler = DDPMScheduler(**scheduler_config())
    return TinySD(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def parameter_counts(models: TinySD) -> dict[str, int]:
    counts = {
        name: sum(p.numel() for p in getattr(models, name).parameters()) for name in ("vae", "unet", "text_encoder")
    }
    counts["total"] = sum(counts.values())
    return counts


def model_index(diffusers_version: Optional[str] = None) -> dict[str, Any]:
    """model_index.json of a StableDiffusionPipeline without safety checker / feature extractor."""
    if diffusers_version is None:
        import diffusers

        diffusers_version = diffusers.__version__
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers_version,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def save_model(models: TinySD, out_dir: Union[str, Path], dtype: torch.dtype = torch.float16) -> Path:
    """Write all components in diffusers layout (safetensors weights in `dtype`) plus model_index.json.
    The in-memory modules are not modified (weights are cast on copies)."""
    import copy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vae", "unet", "text_encoder"):
        # torch.nn.Module.to directly: diffusers' override warns about fp32-only modules, which these models lack.
        module = torch.nn.Module.to(copy.deepcopy(getattr(models, name)), device="cpu", dtype=dtype)
        module.save_pretrained(str(out / name), safe_serialization=True)
    models.tokenizer.save_pretrained(str(out / "tokenizer"))
    models.scheduler.save_pretrained(str(out / "scheduler"))
    (out / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n")
    return out


def save_random_model(
    out_dir: Union[str, Path],
    preset: Union[str, TinySDPreset] = "test",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Random-weight tiny SD in diffusers layout at `out_dir` (vae/, unet/, text_encoder/, tokenizer/, scheduler/,
    model_index.json). Loads back with the usual `X.from_pretrained(out_dir, subfolder=...)` calls."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(out)
    models = build_models(preset, tokenizer, seed=seed)
    return save_model(models, out, dtype=dtype)


def load_model(
    path: Union[str, Path], device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32
) -> TinySD:
    """Load a folder written by `save_model` (a local folder: no hub access)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    p = str(path)
    vae = AutoencoderKL.from_pretrained(p, subfolder="vae", torch_dtype=dtype).to(device)
    unet = UNet2DConditionModel.from_pretrained(p, subfolder="unet", torch_dtype=dtype).to(device)
    text_encoder = CLIPTextModel.from_pretrained(p, subfolder="text_encoder", torch_dtype=dtype).to(device)
    tokenizer = CLIPTokenizer.from_pretrained(p, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(p, subfolder="scheduler")
    return TinySD(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def preset_summary(preset: Union[str, TinySDPreset]) -> dict[str, Any]:
    """The preset's fields as plain JSON types."""
    return asdict(get_preset(preset))
