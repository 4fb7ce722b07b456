"""The Stable Diffusion backend: lazy loading, precision, encoding, prompts, noise prediction."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ednerf_ns.errors import UserError
from ednerf_ns.models2d.diffusion import DEFAULT_MODEL, LatentDiffusion, looks_like_path, resolve_dtype


def test_parts_load_lazily_in_fp32_on_cpu(tiny_sd):
    diffusion = LatentDiffusion(str(tiny_sd), "cpu")
    assert diffusion.loaded_parts() == []
    latents = diffusion.encode(torch.rand(2, 3, 32, 48))
    assert latents.shape == (2, 4, 4, 6) and latents.dtype == torch.float32
    assert diffusion.loaded_parts() == ["vae"]
    assert diffusion.vae.dtype == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16


def test_encode_uses_posterior_mean_times_scaling_factor(tiny_sd):
    diffusion = LatentDiffusion(str(tiny_sd))
    images = torch.rand(1, 3, 32, 32)
    expected = diffusion.vae.encode(images * 2 - 1).latent_dist.mean * diffusion.vae.config.scaling_factor
    assert torch.allclose(diffusion.encode(images), expected, atol=1e-6)
    assert torch.equal(diffusion.encode(images), diffusion.encode(images))  # deterministic: no sampling


def test_large_views_decode_in_tiles(tiny_sd):
    diffusion = LatentDiffusion(str(tiny_sd))
    image = diffusion.decode(torch.randn(1, 4, 100, 104))
    assert image.shape == (1, 3, 800, 832) and 0 <= float(image.min()) and float(image.max()) <= 1


def test_prompt_embeddings_are_cached(tiny_sd):
    diffusion = LatentDiffusion(str(tiny_sd))
    calls = []
    handle = diffusion.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    first = diffusion.embed(["a red sphere", ""])
    second = diffusion.embed(["", "a red sphere", "a red sphere"])
    handle.remove()
    assert len(calls) == 1
    assert torch.equal(first[0], second[1]) and second.shape[0] == 3


def test_v_prediction_models_are_converted_to_epsilon(tiny_sd, tmp_path):
    folder = shutil.copytree(tiny_sd, tmp_path / "vpred")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    config["prediction_type"] = "v_prediction"
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    eps_model, v_model = LatentDiffusion(str(tiny_sd)), LatentDiffusion(str(folder))
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 700])
    emb = eps_model.embed(["", "a cube"])
    raw = eps_model.predict_noise(x, t, emb)  # same weights: the raw network output
    a = eps_model.alphas_cumprod()[t].view(-1, 1, 1, 1)
    assert torch.allclose(v_model.predict_noise(x, t, emb), a.sqrt() * raw + (1 - a).sqrt() * x, atol=1e-5)


def test_fingerprint_follows_the_weights(tiny_sd, tmp_path):
    other = shutil.copytree(tiny_sd, tmp_path / "other")
    assert LatentDiffusion(str(tiny_sd)).fingerprint() == LatentDiffusion(str(other)).fingerprint()
    changed = LatentDiffusion(str(other))
    with torch.no_grad():
        next(changed.vae.parameters()).add_(1.0)
    changed._parts.pop("fingerprint:vae", None)
    assert changed.fingerprint() != LatentDiffusion(str(tiny_sd)).fingerprint()


def test_missing_models_fail_in_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        _ = LatentDiffusion(str(tmp_path / "none")).vae
    with pytest.raises(UserError, match="that hub id was removed; use " + DEFAULT_MODEL):
        _ = LatentDiffusion("runwayml/stable-diffusion-v1-5").vae
    assert looks_like_path("./models/sd") and not looks_like_path("org/name")


def test_prefetch_loads_in_the_background_and_leaves_errors_to_the_caller(tiny_sd, tmp_path):
    """The edit's trainer starts loading the UNet and text encoder while the dataset is read; a part that cannot
    load there is loaded again by whoever needs it, and that load reports the error in one line."""
    diffusion = LatentDiffusion(str(tiny_sd), "cpu")
    diffusion.prefetch(("tokenizer", "text_encoder")).join(timeout=300)
    assert diffusion.loaded_parts() == ["text_encoder", "tokenizer"]
    broken = tmp_path / "no-unet"
    shutil.copytree(tiny_sd, broken)
    shutil.rmtree(broken / "unet")
    partial = LatentDiffusion(str(broken), "cpu")
    partial.prefetch(("unet", "vae")).join(timeout=300)  # nothing escapes the thread; it stops at the failure
    assert partial.loaded_parts() == []
    with pytest.raises(UserError, match="no 'unet/' subfolder"):
        _ = partial.unet
