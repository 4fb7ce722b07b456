"""Stable Diffusion as users have it: hub-snapshot folders (SD 1.5 and the v-prediction SD 2.x layout, fp16
variant files only) loaded through the method's own loading code; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
from conftest import edit_config, run_training, train_config
from hub_snapshots import SD15, SD21, write_snapshot
from safetensors.torch import load_file

from ednerf_ns.models2d.diffusion import LatentDiffusion, weights_variant
from ednerf_ns.ops import guidance


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return write_snapshot(tmp_path_factory.mktemp("hub") / "stable-diffusion-v1-5", SD15)


@pytest.fixture(scope="module")
def sd21(tmp_path_factory):
    return write_snapshot(tmp_path_factory.mktemp("hub") / "stable-diffusion-2-1", SD21, seed=1)


def text_layers(diffusion) -> int:
    """Transformer layers of the loaded text encoder, counted in its weights."""
    return len({k.split(".layers.")[1].split(".")[0] for k in diffusion.text_encoder.state_dict() if ".layers." in k})


def test_sd15_snapshot_loads_with_the_true_layout(sd15):
    assert weights_variant(sd15 / "unet") == "fp16" and weights_variant(sd15 / "text_encoder") == "fp16"
    diffusion = LatentDiffusion(str(sd15), "cpu")
    unet, vae = diffusion.unet, diffusion.vae
    assert unet.dtype == torch.float32  # fp16 files, upcast for the CPU
    assert [type(b).__name__ for b in unet.down_blocks] == SD15["unet"]["down_block_types"]
    assert all(len(b.resnets) == 2 for b in unet.down_blocks) and len(vae.encoder.down_blocks) == 4
    assert text_layers(diffusion) == 12
    stored = load_file(str(sd15 / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    key = "down_blocks.0.attentions.0.proj_in.weight"
    assert torch.equal(unet.state_dict()[key], stored[key].float())  # the file's weights, not a fresh init
    assert diffusion.max_tokens == 77 and diffusion.prediction_type == "epsilon"
    latents = diffusion.encode(torch.rand(1, 3, 64, 48))
    assert latents.shape == (1, 4, 8, 6) and diffusion.decode(latents).shape == (1, 3, 64, 48)
    text = diffusion.embed(["", "a red sphere", "a blue sphere"])
    assert text.shape == (3, 77, 48) and not torch.equal(text[1], text[2])
    eps = diffusion.predict_noise(latents.repeat(3, 1, 1, 1), torch.tensor([50, 500, 950]), text)
    assert eps.shape == (3, 4, 8, 6) and torch.isfinite(eps).all()


def test_sd2_v_prediction_is_converted_for_guidance(sd21):
    """An oracle v-predictor (data = one known latent x0): converted to noise, SDS at x0 must be exactly zero."""
    diffusion = LatentDiffusion(str(sd21), "cpu")
    assert diffusion.prediction_type == "v_prediction"
    assert text_layers(diffusion) == 23
    assert diffusion.unet.config.use_linear_projection
    alphas = diffusion.alphas_cumprod()
    torch.manual_seed(0)
    x0 = torch.randn(1, 4, 8, 8)

    def oracle_v(x_t, t, text):  # the exact v of the noisy input for data at x0
        a = alphas[t].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    diffusion._unet_runner = oracle_v  # the UNet call inside predict_noise, replaced by the oracle network
    text = diffusion.embed(["", "a red sphere"])
    for step in (50, 500, 900):
        t, eps = torch.tensor([step]), torch.randn(1, 4, 8, 8)
        grad = guidance.sds_gradient(x0, text[1], text[0], diffusion.predict_noise, alphas, t, eps, 7.5)
        assert grad.abs().max() < 1e-4
        x_t = guidance.add_noise(x0, eps, t, alphas)
        assert (oracle_v(x_t, t, None) - eps).abs().max() > 0.1  # read as noise, v would be wrong


def test_edit_with_a_v_prediction_snapshot(sd21, scene, tmp_path):
    run = run_training(train_config(scene, sd21, tmp_path / "train", tmp_path / "cache", steps=2))
    edited = run_training(edit_config(run, scene, tmp_path / "edit", tmp_path / "cache", steps=2))
    assert list((edited / "nerfstudio_models").glob("step-*.ckpt"))
    from ednerf_ns.tools.runs import load_run

    pipeline = load_run(edited / "config.yml")
    out = pipeline.model.get_outputs_for_camera(pipeline.datamanager.eval_dataset.cameras[0:1])
    assert out["rgb"].shape == (64, 64, 3) and torch.isfinite(out["rgb"]).all()
