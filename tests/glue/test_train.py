"""ed-nerf (stage 1): plugin registration, latent data, field, refinement, training, evaluation, bad input."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_scene, run_training, train_config

from ednerf_ns.errors import UserError
from ednerf_ns.ops.latent_grid import downsample_mask, image_float, target_size
from ednerf_ns.ops.refinement import RefinementLayer


def test_methods_are_registered_with_nerfstudio():
    from nerfstudio.plugins.registry import discover_methods

    methods, descriptions = discover_methods()
    assert "ed-nerf" in methods and "ed-nerf-edit" in methods
    assert "ED-NeRF" in descriptions["ed-nerf"]


def test_entry_point_module_does_not_import_diffusers():
    code = "import sys, ednerf_ns.configs; print('diffusers' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_refinement_is_identity_at_init_and_learns():
    layer = RefinementLayer(4, width=32, num_heads=2)
    z = torch.randn(2, 4, 9, 7)
    assert torch.equal(layer(z), z)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    target = z.roll(1, dims=-1)  # needs spatial context: a shift
    loss0 = torch.nn.functional.mse_loss(layer(z), target)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.mse_loss(layer(z), target).backward()
        opt.step()
    assert torch.nn.functional.mse_loss(layer(z), target) < 0.8 * loss0


def test_field_emits_unbounded_latent_channels():
    from nerfstudio.cameras.rays import Frustums, RaySamples
    from nerfstudio.field_components.field_heads import FieldHeadNames

    from ednerf_ns.field import LatentField

    field = LatentField(
        torch.tensor([[-1.0] * 3, [1.0] * 3]),
        num_images=1,
        latent_channels=4,
        implementation="torch",
        num_levels=4,
        log2_hashmap_size=10,
        max_res=64,
        appearance_embedding_dim=0,
    )
    n = 16
    frustums = Frustums(
        origins=torch.zeros(n, 1, 3),
        directions=torch.nn.functional.normalize(torch.randn(n, 1, 3)),
        starts=torch.zeros(n, 1, 1),
        ends=torch.ones(n, 1, 1) * 0.1,
        pixel_area=torch.ones(n, 1, 1),
    )
    samples = RaySamples(frustums=frustums, camera_indices=torch.zeros(n, 1, 1, dtype=torch.long))
    with torch.no_grad():
        last = [m for m in field.mlp_head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias.fill_(-3.0)  # a sigmoid could never produce this
    out = field(samples)[FieldHeadNames.RGB]
    assert out.shape == (n, 1, 4)
    assert float(out.max()) < -2.0


def test_image_sizes_snap_to_multiples_of_eight():
    assert target_size(480, 640, 512) == (384, 512)
    assert target_size(100, 60, 512) == (104, 64)
    assert target_size(3000, 4000, 0) == (3000, 4000)
    assert target_size(5, 5, 512) == (8, 8)


def test_masks_downsample_to_block_coverage():
    mask = torch.zeros(16, 24, 1, dtype=torch.bool)
    mask[0:8, 0:8] = True  # one full latent pixel
    mask[8:12, 8:16] = True  # half of another
    small = downsample_mask(mask)
    assert small.shape == (1, 2, 3)
    assert small[0, 0, 0] == 1.0 and small[0, 1, 1] == 0.5 and small[0, 1, 2] == 0.0


def build_pipeline(scene: Path, tiny_sd: Path, cache: Path, **model_options):
    config = train_config(scene, tiny_sd, cache.parent / "unused", cache, steps=1, **model_options)
    return config, config.pipeline.setup(device="cpu", test_mode="val")


def test_latents_are_cached_and_reused(tmp_path, scene, tiny_sd):
    cache = tmp_path / "cache"
    _, first = build_pipeline(scene, tiny_sd, cache)
    n_train = len(first.datamanager.train_dataset)
    assert first.datamanager.cache_stats["train"] == (0, n_train)
    _, second = build_pipeline(scene, tiny_sd, cache)
    assert second.datamanager.cache_stats["train"] == (n_train, 0)
    a, b = first.datamanager.cached_train[0], second.datamanager.cached_train[0]
    assert torch.equal(a["latent"], b["latent"])
    assert a["latent"].shape == (4, 8, 8) and a["image"].shape == (64, 64, 3)
    # dataset masks arrive at latent resolution, as the share of each 8x8 block inside the object
    assert a["latent_mask"].shape == (1, 8, 8)
    assert torch.allclose(a["latent_mask"], downsample_mask(a["mask"]))
    assert 0 < float(a["latent_mask"].mean()) < 1


def test_latents_match_a_direct_vae_encoding(tmp_path, scene, tiny_sd):
    from ednerf_ns.models2d.diffusion import LatentDiffusion

    _, pipeline = build_pipeline(scene, tiny_sd, tmp_path / "cache")
    view = pipeline.datamanager.cached_train[3]
    assert view["image"].dtype == torch.uint8  # kept small; the encoder reads it as [0, 1]
    direct = LatentDiffusion(str(tiny_sd)).encode(image_float(view["image"]).permute(2, 0, 1)[None])[0]
    assert torch.allclose(view["latent"], direct, atol=1e-5)


def test_training_steps_reduce_the_latent_loss(tmp_path, scene, tiny_sd):
    from nerfstudio.engine.optimizers import Optimizers

    config, pipeline = build_pipeline(scene, tiny_sd, tmp_path / "cache")
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
    losses = []
    for step in range(40):
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        optimizers.zero_grad_all()
        functools.reduce(torch.add, loss_dict.values()).backward()
        optimizers.optimizer_step_all()
        losses.append(float(loss_dict["latent_loss"]))
    assert sum(losses[-8:]) / 8 < 0.6 * sum(losses[:8]) / 8


def test_refinement_can_be_switched_off(tmp_path, scene, tiny_sd):
    _, pipeline = build_pipeline(scene, tiny_sd, tmp_path / "cache", use_refinement=False)
    assert pipeline.model.refinement is None
    assert "refinement" not in pipeline.get_param_groups()
    assert not any("refinement" in k for k in pipeline.state_dict())


def test_trained_run_writes_checkpoint_and_ns_eval_reports_latent_psnr(trained_run, tmp_path):
    from nerfstudio.scripts.eval import ComputePSNR

    ckpts = list((trained_run / "nerfstudio_models").glob("step-*.ckpt"))
    assert len(ckpts) == 1
    # nerfstudio's own checkpoint loader (torch.load's default weights_only=True) must read it
    torch.load(ckpts[0], map_location="cpu")
    out = tmp_path / "eval.json"
    ComputePSNR(load_config=trained_run / "config.yml", output_path=out).main()
    results = json.loads(out.read_text())["results"]
    assert results["latent_psnr"] > 10.0
    assert {"psnr", "ssim"} <= set(results)
    assert "implementation: torch" in (trained_run / "config.yml").read_text()


def test_get_outputs_for_camera_decodes_full_resolution_rgb(trained_run):
    from nerfstudio.utils.eval_utils import eval_setup

    from ednerf_ns.models2d.diffusion import release_all

    release_all()
    _, pipeline, _, _ = eval_setup(trained_run / "config.yml", test_mode="inference")
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    camera.width[:] = 60  # not a multiple of 8: the decoded image must still match exactly
    camera.height[:] = 44
    out = pipeline.model.get_outputs_for_camera(camera)
    assert out["rgb"].shape == (44, 60, 3) and out["depth"].shape == (44, 60, 1)
    assert out["latent"].shape == (44, 60, 4) and out["accumulation"].shape == (44, 60, 1)
    assert float(out["rgb"].min()) >= 0 and float(out["rgb"].max()) <= 1
    assert pipeline.model.diffusion.loaded_parts() == ["vae"]


def test_resume_from_load_dir(trained_run, tmp_path, scene, tiny_sd, cache_dir):
    config = train_config(scene, tiny_sd, tmp_path, cache_dir, steps=3)
    config.load_dir = trained_run / "nerfstudio_models"
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert trainer._start_step == 60


# ---------------------------------------------------------------------------------------------- bad input
def expect_user_error(config, *fragments: str) -> str:
    with pytest.raises(UserError) as info:
        run_training(config)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    return message


def test_missing_dataset_folder(tmp_path, tiny_sd, cache_dir):
    expect_user_error(train_config(tmp_path / "nope", tiny_sd, tmp_path, cache_dir, 2), "does not exist", "--data")


def test_dataset_without_poses(tmp_path, tiny_sd, cache_dir):
    (tmp_path / "scene").mkdir()
    expect_user_error(train_config(tmp_path / "scene", tiny_sd, tmp_path, cache_dir, 2), "transforms.json")
    (tmp_path / "scene" / "transforms.json").write_text(json.dumps({"fl_x": 10, "frames": [{"file_path": "a.png"}]}))
    expect_user_error(train_config(tmp_path / "scene", tiny_sd, tmp_path, cache_dir, 2), "frame 0", "transform_matrix")


def test_broken_image(tmp_path, tiny_sd, cache_dir):
    data = make_scene(tmp_path / "scene", views=6)
    (data / "images" / "frame_00002.png").write_bytes(b"not a png")
    expect_user_error(train_config(data, tiny_sd, tmp_path, cache_dir, 2), "frame_00002.png")


def test_image_size_disagreeing_with_camera(tmp_path, tiny_sd, cache_dir):
    from PIL import Image

    data = make_scene(tmp_path / "scene", views=6)
    Image.new("RGB", (40, 30)).save(data / "images" / "frame_00003.png")
    expect_user_error(train_config(data, tiny_sd, tmp_path, cache_dir, 2), "frame_00003.png", "40x30")


def test_mixed_image_sizes_are_supported(tmp_path, tiny_sd, cache_dir):
    from PIL import Image

    data = make_scene(tmp_path / "scene", views=6)
    meta = json.loads((data / "transforms.json").read_text())
    intrinsics = {k: meta.pop(k) for k in ("fl_x", "fl_y", "cx", "cy", "w", "h")}  # per frame from now on
    for frame in meta["frames"]:
        frame.update(intrinsics)
    frame = meta["frames"][1]
    Image.open(data / frame["file_path"]).resize((96, 80)).save(data / frame["file_path"])
    Image.open(data / frame["mask_path"]).resize((96, 80)).save(data / frame["mask_path"])
    frame.update(w=96, h=80, fl_x=frame["fl_x"] * 1.5, fl_y=frame["fl_y"] * 1.25, cx=48.0, cy=40.0)
    (data / "transforms.json").write_text(json.dumps(meta))
    _, pipeline = build_pipeline(data, tiny_sd, cache_dir)
    shapes = {tuple(v["latent"].shape) for v in pipeline.datamanager.cached_train}
    assert shapes == {(4, 8, 8), (4, 10, 12)}


def test_unknown_diffusion_model(tmp_path, scene, cache_dir):
    expect_user_error(train_config(scene, tmp_path / "no-such-model", tmp_path, cache_dir, 2), "does not exist")
    message = expect_user_error(train_config(scene, "nobody/no-such-model", tmp_path, cache_dir, 2), "nobody/no-such")
    assert "--pipeline.model.diffusion-model" in message
    (tmp_path / "half").mkdir()
    expect_user_error(train_config(scene, tmp_path / "half", tmp_path, cache_dir, 2), "no 'vae/' subfolder")


def test_cli_prints_one_error_line_and_fails(tmp_path):
    ns_train = Path(sys.executable).parent / "ns-train"
    result = subprocess.run(
        [
            str(ns_train),
            "ed-nerf",
            "--data",
            str(tmp_path / "missing"),
            "--vis",
            "tensorboard",
            "--machine.device-type",
            "cpu",
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ed-nerf: error: dataset") and "does not exist" in last
    assert "Traceback" not in result.stderr


def test_field_density_equals_nerfactos_without_a_position_gradient():
    # get_density is nerfacto's function; only the (unused) gradient w.r.t. sample positions is left out.
    from nerfstudio.cameras.rays import Frustums, RaySamples
    from nerfstudio.fields.nerfacto_field import NerfactoField

    from ednerf_ns.field import LatentField

    torch.manual_seed(0)
    field = LatentField(
        torch.tensor([[-1.0] * 3, [1.0] * 3]),
        num_images=1,
        implementation="torch",
        num_levels=4,
        log2_hashmap_size=10,
        max_res=64,
        spatial_distortion=None,  # normalised by the box: samples outside it get zero density
    )
    n = 64
    frustums = Frustums(
        origins=torch.randn(n, 1, 3),
        directions=torch.nn.functional.normalize(torch.randn(n, 1, 3)),
        starts=torch.rand(n, 1, 1),
        ends=torch.rand(n, 1, 1) + 1,
        pixel_area=torch.ones(n, 1, 1),
    )
    samples = RaySamples(frustums=frustums, camera_indices=torch.zeros(n, 1, 1, dtype=torch.long))
    density, features = field.get_density(samples)
    assert not field._sample_locations.requires_grad
    reference, reference_features = NerfactoField.get_density(field, samples)
    assert field._sample_locations.requires_grad
    assert torch.equal(density, reference) and torch.equal(features, reference_features)
    assert bool((density == 0).any()) and bool((density > 0).any())
