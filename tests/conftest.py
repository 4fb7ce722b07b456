"""Shared fixtures: a tiny random Stable Diffusion in diffusers layout, small procedural scenes, and short runs.

Everything is made in temporary folders and loaded through the same `from_pretrained` / nerfstudio code paths a
user's run takes. Nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]


def cli_env(cache: Path) -> dict[str, str]:
    """The environment of a command run in a subprocess: this checkout first on the path, no hub, caches in `cache`."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(cache), "COLUMNS": "200"}


def run_cli(
    args: list[str], cache: Path, timeout: float = 600, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """`python <args>` in a subprocess (see `cli_env`), output captured."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env={**cli_env(cache), **(env or {})},
        **kwargs,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def no_test_ends_the_test_process(monkeypatch):
    """A trainer run in-process as `ns-train` (argv faked) would end pytest itself after its final save
    (`exit_after_save`: os._exit(0)), silently, with exit status 0 and the remaining tests never run. Fail instead."""
    from ednerf_ns import trainer

    def refuse(*_args, **_kwargs):
        raise AssertionError("a trainer would have ended the test process (pass --exit-after-save False)")

    monkeypatch.setattr(trainer, "end_process_now", refuse)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """Random-weight tiny Stable Diffusion (vae/, unet/, text_encoder/, tokenizer/, scheduler/)."""
    from ednerf_ns.demo.tiny_sd import save_random_model

    return save_random_model(tmp_path_factory.mktemp("tiny_sd"), preset="test", seed=0)


def make_scene(out: Path, seed: int = 0, views: int = 12, resolution: int = 64, color: str = "red") -> Path:
    from ednerf_ns.demo.scene import ObjectSpec, SceneSpec, write_nerfstudio_dataset

    spec = SceneSpec(objects=[ObjectSpec("sphere", color, size=0.6)])
    return write_nerfstudio_dataset(spec, out, num_views=views, resolution=resolution, seed=seed, supersample=1)


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> Path:
    """12 views of a red sphere at 64 x 64 px (8 x 8 latents), with object masks."""
    return make_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def train_config(data: Path, model: Path, out: Path, cache: Path, steps: int, **model_options):
    """A small `ed-nerf` config for CPU tests (the method's registered config + the small-scene preset)."""
    from ednerf_ns.configs import ed_nerf_trainer
    from ednerf_ns.presets import apply_small_scene_preset

    config = apply_small_scene_preset(ed_nerf_trainer())
    config.machine.device_type = "cpu"
    config.vis = "tensorboard"
    config.max_num_iterations = steps
    config.steps_per_save = steps
    config.steps_per_eval_batch = 10_000
    config.steps_per_eval_image = 10_000
    config.output_dir = out
    config.experiment_name = "test"
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.cache_dir = cache
    config.pipeline.model.diffusion_model = str(model)
    for key, value in model_options.items():
        setattr(config.pipeline.model, key, value)
    return config


def run_training(config) -> Path:
    """Train in this process the way `ns-train` does (see ednerf_ns.tools.runs.train_in_process); returns the run
    folder."""
    from ednerf_ns.tools.runs import train_in_process

    return train_in_process(config)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, scene, tiny_sd, cache_dir) -> Path:
    """An `ed-nerf` run (60 steps) on the test scene."""
    config = train_config(scene, tiny_sd, tmp_path_factory.mktemp("runs"), cache_dir, steps=60)
    return run_training(config)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tiny_clip_towers(tokenizer, text_layers: int, vision_layers: int) -> tuple[dict, dict]:
    """Text and vision tower configs of a tiny CLIP (width 16, 32 px images) that uses `tokenizer`'s vocabulary."""
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=text_layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    return text, vision


@pytest.fixture(scope="session")
def tiny_clipseg(tmp_path_factory, tiny_sd) -> Path:
    """Random-weight CLIPSeg (model + processor) in transformers layout, for --mask-prompt."""
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
        ViTImageProcessor,
    )

    out = tmp_path_factory.mktemp("clipseg")
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    text, vision = tiny_clip_towers(tokenizer, text_layers=2, vision_layers=3)
    torch.manual_seed(0)
    config = CLIPSegConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=16,
        extract_layers=[0, 1],
        reduce_dim=8,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
    )
    CLIPSegForImageSegmentation(config).save_pretrained(out)
    CLIPSegProcessor(
        image_processor=ViTImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    ).save_pretrained(out)
    return out


def edit_config(source_run: Path, data: Path | None, out: Path, cache: Path, steps: int, **model_options):
    """A short `ed-nerf-edit` config for CPU tests: architecture from the source run, prompts from the caller."""
    from ednerf_ns.configs import ed_nerf_edit_trainer

    config = ed_nerf_edit_trainer()
    config.machine.device_type = "cpu"
    config.vis = "tensorboard"
    config.max_num_iterations = steps
    config.steps_per_save = steps
    config.steps_per_eval_batch = 10_000
    config.steps_per_eval_image = 10_000
    config.output_dir = out
    config.experiment_name = "edit"
    config.load_dir = source_run / "nerfstudio_models"
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.cache_dir = cache
    config.pipeline.model.prompt = "a blue sphere"
    config.pipeline.model.source_prompt = "a red sphere"
    for key, value in model_options.items():
        setattr(config.pipeline.model, key, value)
    return config


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory, tiny_sd) -> Path:
    """Random-weight CLIPModel + CLIPProcessor (tiny towers, the tiny SD tokenizer) in transformers layout."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = tmp_path_factory.mktemp("clip")
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    text, vision = tiny_clip_towers(tokenizer, text_layers=1, vision_layers=1)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def edited_run(trained_run, scene, cache_dir, tmp_path_factory) -> Path:
    """A 25-step `ed-nerf-edit` run of `trained_run` ('a red sphere' -> 'a blue sphere', dataset masks)."""
    config = edit_config(trained_run, scene, tmp_path_factory.mktemp("edited"), cache_dir, steps=25)
    config.pipeline.model.mask_source = "dataset"  # the test scene's masks mark the sphere
    return run_training(config)
