"""ed-nerf-edit (stage 2): loading the source run, the edit step, masks, viewer controls, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import edit_config, run_training, tree_hashes

from ednerf_ns.errors import UserError


@pytest.fixture(scope="module")
def edited(trained_run, scene, cache_dir, tmp_path_factory):
    """A 25-step edit of the trained run, with the source run's file hashes before and after."""
    before = tree_hashes(trained_run)
    config = edit_config(trained_run, scene, tmp_path_factory.mktemp("edits"), cache_dir, steps=25)
    run = run_training(config)
    return run, before, tree_hashes(trained_run)


def test_edit_never_modifies_the_source_run(edited):
    _, before, after = edited
    assert before == after


def test_edit_run_records_source_and_architecture(edited, trained_run):
    run, _, _ = edited
    config = yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader)
    source = yaml.load((trained_run / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.method_name == "ed-nerf-edit"
    assert Path(config.pipeline.source_checkpoint).parent == trained_run / "nerfstudio_models"
    for name in ("num_levels", "log2_hashmap_size", "refinement_width", "implementation", "diffusion_model"):
        assert getattr(config.pipeline.model, name) == getattr(source.pipeline.model, name), name
    assert config.pipeline.model.prompt == "a blue sphere"
    assert list((run / "nerfstudio_models").glob("step-*.ckpt"))


def test_edit_defaults_to_the_source_runs_data(trained_run, scene, cache_dir, tmp_path):
    config = edit_config(trained_run, None, tmp_path, cache_dir, steps=1)
    config.experiment_name = None  # as on the command line
    config.validate()
    assert config.pipeline.datamanager.data == scene
    assert config.get_base_dir().parts[-3] == scene.name  # experiment named after the scene, not "unnamed"


def test_edit_loads_every_source_parameter(trained_run, scene, cache_dir, tmp_path):
    from ednerf_ns.trainer import EdNerfEditTrainer

    config = edit_config(trained_run, scene, tmp_path, cache_dir, steps=1)
    trainer = EdNerfEditTrainer(config)
    trainer.setup()
    source = torch.load(next((trained_run / "nerfstudio_models").glob("*.ckpt")), map_location="cpu")["pipeline"]
    state = trainer.pipeline.state_dict()
    frozen = {k for k in state if ".density_base." in k}  # the frozen copy of the density network (the default)
    assert frozen and set(state) == set(source) | frozen
    assert all(torch.equal(state[k].cpu(), source[k]) for k in source)
    assert all(torch.equal(state[k].cpu(), source[k.replace("density_base.", "mlp_base.")]) for k in frozen)
    assert trainer._start_step == 0


# What an edit may change (README, "What an edit updates"): by default the hash grid of the field's density network
# and the colour head, the density coming from a frozen copy of the source's; with edit_geometry True also the
# proposal networks (which follow the density). Refinement layer, density MLP: never.
GRID_AND_HEAD = ("_model.field.mlp_base.model.0.hash_table", "_model.field.mlp_head.")


def changed_keys(source_run: Path, edit_run: Path) -> tuple[set[str], dict, dict]:
    source = torch.load(next((source_run / "nerfstudio_models").glob("*.ckpt")), map_location="cpu")["pipeline"]
    result = torch.load(next((edit_run / "nerfstudio_models").glob("*.ckpt")), map_location="cpu")["pipeline"]
    return {k for k in source if not torch.equal(source[k], result[k])}, source, result


def test_what_an_edit_updates(edited, trained_run):
    run, _, _ = edited
    changed, source, result = changed_keys(trained_run, run)
    assert changed == {k for k in source if k.startswith(GRID_AND_HEAD)}
    frozen = [k for k in result if ".density_base." in k]
    assert frozen and set(result) == set(source) | set(frozen)
    assert all(torch.equal(result[k], source[k.replace("density_base.", "mlp_base.")]) for k in frozen)
    from ednerf_ns.tools.runs import load_run  # the edit run loads for viewing with its frozen copy

    pipeline = load_run(run / "config.yml")
    assert pipeline.model.field.density_base is not None


def test_an_edit_of_the_geometry_also_moves_the_proposal_networks(trained_run, scene, cache_dir, tmp_path):
    run = run_training(edit_config(trained_run, scene, tmp_path, cache_dir, steps=3, edit_geometry=True))
    changed, source, result = changed_keys(trained_run, run)
    proposals = {k for k in source if k.startswith("_model.proposal_networks.")}
    assert changed - proposals == {k for k in source if k.startswith(GRID_AND_HEAD)}
    assert changed & proposals
    assert set(result) == set(source)


def render_latents(config_path: Path) -> tuple[list[torch.Tensor], object]:
    """Refined latents of the first training views of a run, and its pipeline."""
    from ednerf_ns.tools.runs import load_run

    pipeline = load_run(config_path, test_mode="inference")
    cameras = pipeline.datamanager.train_dataset.cameras
    with torch.no_grad():
        latents = [pipeline.model.render_latent_view(cameras[i : i + 1], chunk=4096)["latent"][0] for i in range(4)]
    return latents, pipeline


def test_edited_run_renders_without_unet_or_text_encoder(edited, tmp_path):
    from nerfstudio.scripts.eval import ComputePSNR

    from ednerf_ns.models2d.diffusion import release_all

    run, _, _ = edited
    release_all()  # as in a fresh `ns-render` process: nothing loaded yet
    _, pipeline = render_latents(run / "config.yml")
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    out = pipeline.model.get_outputs_for_camera(camera)
    assert out["rgb"].shape == (64, 64, 3)
    assert pipeline.model.diffusion.loaded_parts() == ["vae"]
    ComputePSNR(load_config=run / "config.yml", output_path=tmp_path / "eval.json").main()
    assert (tmp_path / "eval.json").is_file()


# ---------------------------------------------------------------------------------------------- the source run
def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_non_ed_nerf_run_is_refused(trained_run, scene, cache_dir, tmp_path):
    fake = copy_run(trained_run, tmp_path / "nerfacto_run")
    text = (fake / "config.yml").read_text().replace("method_name: ed-nerf", "method_name: nerfacto")
    (fake / "config.yml").write_text(text)
    with pytest.raises(UserError, match="'nerfacto' run, not an ed-nerf run"):
        run_training(edit_config(fake, scene, tmp_path, cache_dir, steps=1))


def test_corrupted_checkpoint_is_refused(trained_run, scene, cache_dir, tmp_path):
    broken = copy_run(trained_run, tmp_path / "broken")
    ckpt = next((broken / "nerfstudio_models").glob("*.ckpt"))
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(UserError, match="could not read checkpoint"):
        run_training(edit_config(broken, scene, tmp_path, cache_dir, steps=1))


def test_architecture_mismatch_is_refused(trained_run, scene, cache_dir, tmp_path):
    other = copy_run(trained_run, tmp_path / "other")
    text = (other / "config.yml").read_text().replace("use_refinement: true", "use_refinement: false")
    (other / "config.yml").write_text(text)
    with pytest.raises(UserError, match="does not fit this model: .*unexpected"):
        run_training(edit_config(other, scene, tmp_path, cache_dir, steps=1))


def test_implementation_mismatch_is_refused(trained_run, scene, cache_dir, tmp_path):
    config = edit_config(trained_run, scene, tmp_path, cache_dir, steps=1, implementation="tcnn")
    with pytest.raises(UserError, match="tcnn"):
        run_training(config)


def test_missing_or_empty_load_dir(trained_run, scene, cache_dir, tmp_path):
    config = edit_config(trained_run, scene, tmp_path, cache_dir, steps=1)
    config.load_dir = tmp_path / "nowhere"
    with pytest.raises(UserError, match="does not exist"):
        run_training(config)
    (tmp_path / "empty").mkdir()
    config.load_dir = tmp_path / "empty"
    with pytest.raises(UserError, match="no step-"):
        run_training(config)
    config.load_dir = None
    with pytest.raises(UserError, match="--load-dir"):
        run_training(config)


# ---------------------------------------------------------------------------------------------- prompts
def test_empty_prompt_is_refused(trained_run, scene, cache_dir, tmp_path):
    with pytest.raises(UserError, match="target prompt is empty"):
        run_training(edit_config(trained_run, scene, tmp_path, cache_dir, steps=1, prompt="  "))


def build_edit_pipeline(trained_run, scene, cache_dir, tmp_path, **options):
    from ednerf_ns.trainer import EdNerfEditTrainer

    trainer = EdNerfEditTrainer(edit_config(trained_run, scene, tmp_path, cache_dir, steps=1, **options))
    trainer.setup()
    return trainer


def test_identical_prompts_and_long_prompts_warn(trained_run, scene, cache_dir, tmp_path, capsys):
    long = " ".join(["a very red sphere"] * 40)
    build_edit_pipeline(trained_run, scene, cache_dir, tmp_path, prompt=long, source_prompt=long)
    out = capsys.readouterr().out
    assert "identical" in out
    assert "truncated" in out


def test_viewer_controls_change_the_next_step_and_encode_once(trained_run, scene, cache_dir, tmp_path):
    trainer = build_edit_pipeline(trained_run, scene, cache_dir, tmp_path)
    pipeline = trainer.pipeline
    encoder = pipeline.model.diffusion.text_encoder
    calls = []
    handle = encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        element = pipeline.target_prompt_text
        element.value = "a green sphere"
        element.cb_hook(element)
        slider = pipeline.guidance_scale_slider
        slider.value = 12.0
        slider.cb_hook(slider)
        for step in range(3):
            pipeline.get_train_loss_dict(step)
    finally:
        handle.remove()
    assert pipeline.model.config.prompt == "a green sphere"
    assert pipeline.model.config.guidance_scale == 12.0
    assert len(calls) == 1  # the new prompt, once; the others were cached


def test_sds_and_render_source_latents(trained_run, scene, cache_dir, tmp_path):
    trainer = build_edit_pipeline(trained_run, scene, cache_dir, tmp_path, guidance="sds", source_latent="render")
    view = trainer.pipeline.datamanager.cached_train[0]
    assert view["source_latent"].shape == view["latent"].shape
    _, loss, _ = trainer.pipeline.get_train_loss_dict(0)
    assert torch.isfinite(loss["guidance_loss"])


def test_non_finite_guidance_is_skipped(trained_run, scene, cache_dir, tmp_path):
    trainer = build_edit_pipeline(trained_run, scene, cache_dir, tmp_path)
    model = trainer.pipeline.model
    model.diffusion.predict_noise = lambda x, t, e: torch.full_like(x, float("nan"))  # instance override
    try:
        _, loss, metrics = trainer.pipeline.get_train_loss_dict(0)
        total = sum(loss.values())
        total.backward()
    finally:
        del model.diffusion.predict_noise
    assert int(metrics["edit_skipped_steps"]) == 1
    grads = [p.grad for p in model.field.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------- masks
def test_dataset_masks_become_edit_masks_only_when_asked(trained_run, scene, cache_dir, tmp_path, capsys):
    trainer = build_edit_pipeline(trained_run, scene, cache_dir, tmp_path, mask_dilation=0, mask_source="dataset")
    view = trainer.pipeline.datamanager.cached_train[0]
    expected = (view["latent_mask"] > 0.35).float()
    assert torch.equal(view["edit_mask"], expected)
    for source in ("auto", "none"):  # auto without a mask prompt: no mask, whatever the dataset has
        trainer = build_edit_pipeline(trained_run, scene, cache_dir, tmp_path, mask_source=source)
        view = trainer.pipeline.datamanager.cached_train[0]
        assert "latent_mask" in view and "edit_mask" not in view
    assert "not used as edit regions" in capsys.readouterr().out


def test_masks_of_pixels_to_ignore(trained_run, scene, cache_dir, tmp_path, capsys):
    """A capture whose masks mark pixels to ignore (here: everything but the sphere, most of each view)."""
    import json

    import numpy as np
    from PIL import Image

    data = Path(shutil.copytree(scene, tmp_path / "ignore_masks"))
    for frame in json.loads((data / "transforms.json").read_text())["frames"]:
        path = data / frame["mask_path"]
        Image.fromarray(255 - np.array(Image.open(path))).save(path)
    trainer = build_edit_pipeline(trained_run, data, cache_dir, tmp_path)  # defaults: no edit mask
    assert all("edit_mask" not in view for view in trainer.pipeline.datamanager.cached_train)
    _, loss, _ = trainer.pipeline.get_train_loss_dict(0)
    assert "reconstruction_loss" not in loss and torch.isfinite(loss["guidance_loss"])
    assert "covers" not in capsys.readouterr().out
    build_edit_pipeline(trained_run, data, cache_dir, tmp_path, mask_source="dataset")
    out = " ".join(capsys.readouterr().out.split())
    assert "of the view area on average" in out and "mark pixels to ignore" in out


def test_mask_prompt_uses_clipseg_and_caches(trained_run, scene, cache_dir, tmp_path, tiny_clipseg):
    options = dict(mask_prompt="the sphere", segmentation_model=str(tiny_clipseg), mask_threshold=0.0)
    trainer = build_edit_pipeline(trained_run, scene, cache_dir, tmp_path, **options)
    view = trainer.pipeline.datamanager.cached_train[0]
    assert view["edit_mask"].shape == (1, 8, 8)
    files = list((cache_dir / "masks").glob("*.safetensors"))
    assert len(files) == len(trainer.pipeline.datamanager.cached_train)
    stamps = {f: f.stat().st_mtime_ns for f in files}
    build_edit_pipeline(trained_run, scene, cache_dir, tmp_path, **options)
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # read back, not recomputed


def test_mask_prompt_without_reachable_model(trained_run, scene, cache_dir, tmp_path):
    with pytest.raises(UserError, match="segmentation model 'nobody/no-clipseg'"):
        build_edit_pipeline(
            trained_run, scene, cache_dir, tmp_path, mask_prompt="the sphere", segmentation_model="nobody/no-clipseg"
        )
