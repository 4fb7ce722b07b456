"""`ednerf-bench gpu`: its CPU smoke mode runs every section through the real code paths and reports every number;
the SD 1.5 builder writes a folder LatentDiffusion loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ednerf_ns.bench import gpu


def test_tiny_mode_reports_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = gpu.main(gpu.GpuBenchConfig(mode="tiny", output=out, workdir=tmp_path / "work"))
    assert result["errors"] == {}, result["errors"]
    assert result["skipped"] == {}
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(printed)["mode"] == "tiny"  # one JSON object on the last line of stdout
    assert json.loads(out.read_text())["total_s"] == result["total_s"]

    env = result["environment"]
    for key in ("torch", "diffusers", "transformers", "nerfstudio", "card", "driver", "tinycudann", "git_commit"):
        assert key in env
    assert result.get("ceilings") is None  # CUDA only
    assert result["model"]["unet_params_m"] > 1 and result["model"]["load_s"] >= 0

    unet = result["unet"]
    for variant in ("eager", "channels_last", "cuda_graph", "cuda_graph+channels_last"):
        assert unet[variant]["ms"]["median"] > 0, variant
        assert unet[variant]["rel_error_vs_eager"] == 0.0  # off CUDA every variant is the eager call
        assert unet[variant]["effective"]["cuda_graph"] is False
    floors = result["floors"]
    assert floors["unet_flops"] > 1e8 and floors["unet_weight_bytes"] > 1e6
    assert floors["activation_bytes_written_eager"] > 0
    assert 3.0e12 < floors["sd15_unet_flops_batch4_64x64"] < 3.5e12

    assert result["dataset"]["latent_size"] == 8
    train = result["train"]
    assert train["implementation"] == "torch"
    assert train["step_ms"]["n"] >= 2
    for phase in ("data", "render", "metrics", "loss", "backward", "optimizer", "iteration"):
        assert train["phases_ms"][phase]["median"] >= 0, phase
    assert train["extrapolated_default_s"] > train["loop_s"]
    assert train["default_steps"] == 5000

    edit = result["edit"]
    for phase in ("render", "unet", "loss_without_unet", "backward", "optimizer"):
        assert edit["phases_ms"][phase]["median"] >= 0, phase
    assert edit["unet_acceleration"]["cuda_graph"] is False  # the default asks for it; the CPU ignores it
    assert edit["options"] == {} and edit["edit_masks"] is True
    assert edit["extrapolated_default_s"] > 0
    assert edit["step_graph"] is None  # a CUDA feature: the CPU runs nerfstudio's eager step
    variants = result["edit_variants"]
    assert set(variants) == {
        "refinement_bf16",
        "tf32",
        "no_triton_hash_grid",
        "no_step_graph",
        "no_step_graph_no_triton",
        "no_step_graph_no_triton_eager_unet",
    }
    assert variants["no_step_graph"]["options"] == {"step_cuda_graph": False}
    assert all(v["step_ms"]["n"] >= 1 for v in variants.values())
    after = result["train_after_anneal"]
    assert after["options"] == {"proposal_weights_anneal_max_num_iters": 1} and after["step_ms"]["n"] >= 2
    estimate = result["train_default_estimate"]
    assert estimate["anneal_steps"] == 1000 and estimate["extrapolated_default_s"] > train["loop_s"]
    assert "hash_grid" not in result  # CUDA only
    assert set(result["targets"]) == {"edit_step_ms", "edit_peak_memory_gb", "edit_default_s", "train_default_s"}


def test_time_budget_skips_optional_sections(tmp_path):
    bench = gpu.Bench(gpu.GpuBenchConfig(mode="tiny", workdir=tmp_path, time_budget_s=5.0))
    assert bench.affordable("quick", 1.0)
    assert not bench.affordable("slow", 60.0)
    assert set(bench.result["skipped"]) == {"slow"}


def test_arguments_without_tyro(monkeypatch):
    argv = ["--mode", "tiny", "--no-full-edit", "--train-steps", "7", "--time-budget-s", "9.5", "--output", "x.json"]
    monkeypatch.setitem(sys.modules, "tyro", None)  # import tyro -> ImportError: the argparse fallback
    config = gpu.parse_args(argv)
    assert config == gpu.GpuBenchConfig(
        mode="tiny", full_edit=False, train_steps=7, time_budget_s=9.5, output=Path("x.json")
    )
    monkeypatch.delitem(sys.modules, "tyro")
    assert gpu.parse_args(argv) == config


def test_sd15_builder_writes_a_loadable_diffusers_folder(tmp_path, monkeypatch):
    """build_sd15 with the SD 1.5 layout shrunk (same block types, tiny widths): folder, dtype, and a UNet call
    through LatentDiffusion as the benchmark makes it."""
    from ednerf_ns.models2d.diffusion import LatentDiffusion

    monkeypatch.setitem(gpu.SD15_UNET, "block_out_channels", [32, 32, 64, 64])
    monkeypatch.setitem(gpu.SD15_UNET, "cross_attention_dim", 32)
    monkeypatch.setitem(gpu.SD15_UNET, "attention_head_dim", 2)
    monkeypatch.setitem(gpu.SD15_UNET, "layers_per_block", 1)
    monkeypatch.setitem(gpu.SD15_VAE, "block_out_channels", [32, 32, 32, 32])
    monkeypatch.setitem(gpu.SD15_VAE, "layers_per_block", 1)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "projection_dim": 32}
    for key, value in {**text, "num_attention_heads": 2}.items():
        monkeypatch.setitem(gpu.SD15_TEXT, key, value)
    info = gpu.build_sd15(tmp_path / "sd", torch.device("cpu"), seed=0)
    assert info["folder_bytes"] > 0
    diffusion = LatentDiffusion(str(tmp_path / "sd"), "cpu", dtype="float32")
    assert diffusion.text_encoder.config.vocab_size == 49408
    assert diffusion.vae.config.scaling_factor == pytest.approx(0.18215)
    text = diffusion.embed(["", gpu.TARGET_PROMPT, "", gpu.SOURCE_PROMPT])
    out = diffusion.predict_noise(torch.randn(4, 4, 8, 8), torch.tensor([50, 300, 600, 900]), text)
    assert out.shape == (4, 4, 8, 8) and torch.isfinite(out).all()
    weights = tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
