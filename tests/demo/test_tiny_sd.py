"""The tiny latent diffusion model: tokenizer, presets and size budget, diffusers round trip, training script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ednerf_ns.demo import tiny_sd as T

CAPTION = "a red sphere on a gray checkered floor"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return T.save_random_model(tmp_path_factory.mktemp("tiny_sd"), preset="test", seed=0)


def test_merges_are_deterministic_and_build_every_word() -> None:
    assert T.learn_merges() == T.learn_merges()
    vocab, merges = T.build_vocab()
    assert len(vocab) == len(set(vocab.values()))  # ids are unique
    assert len(vocab) < 1000  # small: the text embedding stays tiny
    for w in ("red", "sphere", "checkered", "wooden", "cylinder"):
        assert w + "</w>" in vocab
    assert vocab[T.EOS_TOKEN] == len(vocab) - 1


def test_tokenizer_words_are_single_tokens(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, CLIPTokenizer

    tok = T.build_tokenizer(tmp_path)
    for w in T.CAPTION_WORDS:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    ids = tok(CAPTION).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == len(CAPTION.split()) + 2
    assert tok.decode(ids, skip_special_tokens=True) == CAPTION
    # Any text tokenizes (byte fallback), and case is folded like CLIP's.
    odd = tok("zebra 42 ünïcode?", add_special_tokens=False).input_ids
    assert len(odd) > 3 and tok.unk_token_id not in odd
    assert tok("A RED Sphere").input_ids == tok("a red sphere").input_ids
    padded = tok([CAPTION, ""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    assert tok.model_max_length == 77 and padded.shape == (2, 77)
    assert int(padded[1, 2]) == tok.pad_token_id == tok.eos_token_id
    # Loads back offline through both entry points.
    for cls in (AutoTokenizer, CLIPTokenizer):
        again = cls.from_pretrained(str(tmp_path), subfolder="tokenizer")
        assert again(CAPTION).input_ids == ids
        assert again.model_max_length == 77


def test_random_model_round_trips_through_from_pretrained(random_model: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    p = str(random_model)
    vae = AutoencoderKL.from_pretrained(p, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(p, subfolder="unet")
    te = CLIPTextModel.from_pretrained(p, subfolder="text_encoder")
    tok = CLIPTokenizer.from_pretrained(p, subfolder="tokenizer")
    sched = DDPMScheduler.from_pretrained(p, subfolder="scheduler")

    # Same weights as a fresh build with the same seed.
    ref = T.build_models("test", tok, seed=0)
    for name, loaded in (("vae", vae), ("unet", unet), ("text_encoder", te)):
        want = getattr(ref, name).state_dict()
        got = loaded.state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k]) for k in want), name
    saved = load_file(str(random_model / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float32 for v in saved.values())

    # SD-1.x conventions.
    assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "scaled_linear"
    assert sched.config.prediction_type == "epsilon"
    assert abs(sched.config.beta_start - 0.00085) < 1e-12 and abs(sched.config.beta_end - 0.012) < 1e-12
    assert unet.config.cross_attention_dim == te.config.hidden_size
    assert te.config.vocab_size == len(tok) and te.config.max_position_embeddings == 77
    index = json.loads((random_model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]

    # The pieces fit together: 128 px image -> 4 x 16 x 16 latent -> UNet -> decode back to 128 px.
    with torch.no_grad():
        x = torch.rand(1, 3, 128, 128) * 2 - 1
        z = vae.encode(x).latent_dist.mean
        assert z.shape == (1, 4, 16, 16)
        emb = te(tok([CAPTION], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
        assert emb.shape == (1, 77, te.config.hidden_size)
        eps = unet(z, torch.tensor([500]), encoder_hidden_states=emb).sample
        assert eps.shape == z.shape
        assert vae.decode(z).sample.shape == (1, 3, 128, 128)

    # A whole StableDiffusionPipeline loads from the folder too.
    pipe = StableDiffusionPipeline.from_pretrained(p)
    assert pipe.safety_checker is None and isinstance(pipe.unet, UNet2DConditionModel)


def test_presets_sizes(tmp_path: Path) -> None:
    tok = T.build_tokenizer(tmp_path)
    embedded = T.build_models("embedded", tok)  # random weights, not saved
    counts = T.parameter_counts(embedded)
    assert counts["total"] * 2 <= 25_000_000, counts  # fp16 weights within 25 MB
    assert 6_000_000 <= counts["unet"] <= 9_500_000 and counts["text_encoder"] < 1_000_000
    assert 2_000_000 <= counts["vae"] <= 3_000_000
    # SD-like structure: factor 8 with 4 latent channels.
    cfg = embedded.vae.config
    assert len(cfg.block_out_channels) == 4 and cfg.latent_channels == 4
    assert embedded.unet.config.sample_size == 16

    test = T.parameter_counts(T.build_models("test", tok))
    assert test["total"] < 200_000, test
    with pytest.raises(ValueError):
        T.get_preset("huge")


def test_training_script_cpu_smoke(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from ednerf_ns.demo import train_tiny_ldm

    out = tmp_path / "model"
    res = train_tiny_ldm.main(
        [
            "--out", str(out), "--device", "cpu", "--preset", "test", "--resolution", "32",
            "--vae-steps", "3", "--unet-steps", "3", "--vae-batch", "2", "--batch", "4",
            "--pool-size", "8", "--pool-refresh", "1", "--latent-stat-samples", "4", "--psnr-samples", "2",
            "--eval-samples", "1", "--eval-steps", "2", "--eval-floors", "wooden floor", "--supersample", "1",
            "--num-threads", "1", "--log-every", "1",
        ]
    )  # fmt: skip
    assert res["vae_steps"] == 3 and res["unet_steps"] == 3
    assert 0.0 <= res["color_accuracy"] <= 1.0 and res["eval_prompts"] == 18
    assert res["metric_check_on_renders"] >= 0.9  # the colour metric itself works on true renders
    assert res["vae_psnr_db"] > 0
    for f in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "samples_grid.png"):
        assert (out / f).exists(), f
    assert json.loads((out / "train_eval.json").read_text())["unet_steps"] == 3
    vae_cfg = json.loads((out / "vae" / "config.json").read_text())
    assert abs(vae_cfg["scaling_factor"] - res["scaling_factor"]) < 1e-6
    assert all(
        v.dtype == torch.float16 for v in load_file(str(out / "unet/diffusion_pytorch_model.safetensors")).values()
    )
    from PIL import Image

    assert Image.open(out / "samples_grid.png").size == (32, 18 * 32)
