"""`ednerf-eval`: every metric in the JSON, sensible values for identical runs, refusals in one line, and the
reprojection geometry on an analytic scene."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from conftest import make_scene

from ednerf_ns.errors import UserError
from ednerf_ns.ops.metrics import directional_similarity, masked_ssim
from ednerf_ns.tools.evaluate import EvalConfig, EvalView, consistency, edit_regions, main, reproject
from ednerf_ns.tools.runs import RenderedView

METRICS = (
    "clip_directional_similarity",
    "clip_edited_vs_target_prompt",
    "clip_source_vs_target_prompt",
    "clip_source_vs_source_prompt",
    "clip_edited_vs_source_prompt",
    "background_psnr",
    "background_ssim",
    "consistency_psnr_source",
    "consistency_psnr_edited",
    "consistency_psnr_change",
    "consistency_psnr_in_region_source",
    "consistency_psnr_in_region_edited",
)


def test_every_metric_of_an_edit(trained_run, edited_run, tiny_clip, tmp_path):
    # The test scene holds out a single view; consistency needs pairs, so this measures 4 training views.
    config = EvalConfig(
        source=trained_run,
        edited=edited_run,
        output_dir=tmp_path,
        clip_model=str(tiny_clip),
        split="train",
        max_views=4,
    )
    result = main(config)
    assert json.loads((tmp_path / "evaluation.json").read_text()) == result
    assert (tmp_path / "views.png").is_file()
    assert set(METRICS) <= set(result["metrics"])
    for key in METRICS:
        if key.startswith("consistency"):  # a 60-step run has no usable depth yet (see the analytic test below)
            continue
        assert isinstance(result["metrics"][key], float), key
    assert result["metrics"]["consistency_psnr_source"] is None and "depth test" in result["notes"]["consistency"]
    assert -1.0 <= result["metrics"]["clip_directional_similarity"] <= 1.0
    assert result["prompts"] == {"source": "a red sphere", "target": "a blue sphere", "from": "edited run"}
    assert result["edit_region"]["source"] == "dataset masks" and 0 < result["edit_region"]["coverage"] < 1
    assert result["views"] == len(result["per_view"]) == 4 and result["consistency"]["pairs"]
    assert result["per_view"][0]["name"].endswith(".png")


def test_identical_runs(trained_run, tiny_clip, tmp_path):
    with pytest.raises(UserError, match="records no prompts: pass --source-prompt"):
        main(EvalConfig(source=trained_run, edited=trained_run, output_dir=tmp_path, clip_model=str(tiny_clip)))
    config = EvalConfig(
        source=trained_run / "config.yml",
        edited=trained_run,
        output_dir=tmp_path,
        clip_model=str(tiny_clip),
        source_prompt="a red sphere",
        target_prompt="a blue sphere",
        split="train",
        max_views=2,
        dataset_masks=True,  # an ed-nerf run records no edit mask: say what the test scene's masks mark
    )
    result = main(config)
    metrics = result["metrics"]
    assert metrics["background_psnr"] > 60.0 and metrics["background_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["clip_directional_similarity"] is None
    assert "identical to the source renders" in result["notes"]["clip_directional_similarity"]
    assert metrics["consistency_psnr_source"] == metrics["consistency_psnr_edited"]
    assert result["views"] == 2 and result["prompts"]["from"] == "flags"


def test_runs_of_different_scenes_are_refused(trained_run, edited_run, tmp_path):
    other_scene = make_scene(tmp_path / "other_scene", seed=1)
    config = yaml.load((edited_run / "config.yml").read_text(), Loader=yaml.Loader)
    config.pipeline.datamanager.data = other_scene
    config.pipeline.datamanager.dataparser.data = other_scene
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "config.yml").write_text(yaml.dump(config))
    shutil.copytree(edited_run / "nerfstudio_models", moved / "nerfstudio_models")  # a complete run, moved
    with pytest.raises(UserError, match="not runs of the same scene: their eval cameras differ") as info:
        main(EvalConfig(source=trained_run, edited=moved, output_dir=tmp_path, clip=False))
    assert "\n" not in str(info.value)


def test_bad_paths_and_missing_clip_model_are_refused_in_one_line(trained_run, edited_run, tmp_path):
    with pytest.raises(UserError, match="--edited '.*nowhere' does not exist"):
        main(EvalConfig(source=trained_run, edited=tmp_path / "nowhere", output_dir=tmp_path))
    (tmp_path / "config.yml").write_text("method_name: nerfacto\n")
    with pytest.raises(UserError, match="'nerfacto' run, not an ed-nerf run"):
        main(EvalConfig(source=tmp_path, edited=edited_run, output_dir=tmp_path))
    for model in (str(tmp_path / "no_clip_here"), "openai/no-such-clip-model"):
        with pytest.raises(UserError, match="could not load the CLIP model .*--clip-model .*--no-clip") as info:
            main(EvalConfig(source=trained_run, edited=edited_run, output_dir=tmp_path, clip_model=model))
        assert "\n" not in str(info.value)


def test_edit_region_from_clipseg_or_none(tiny_clipseg):
    image = torch.rand(32, 48, 3)
    view = RenderedView("v.png", image, image, None, torch.zeros(4, 4, 6), torch.zeros(4, 4, 6))
    regions, info = edit_regions([view], threshold=0.35, dilation=1, dataset_masks=True)
    assert regions is None and "no masks" in info["reason"]
    regions, info = edit_regions(
        [view], threshold=0.0, dilation=0, dataset_masks=True, mask_prompt="the sphere",
        segmentation_model=str(tiny_clipseg),
    )  # fmt: skip
    assert regions is not None and regions[0].shape == (32, 48) and bool(regions[0].all())
    assert "CLIPSeg" in info["source"] and info["coverage"] == 1.0


def test_dataset_masks_mark_the_object_only_when_said():
    """In nerfstudio a dataset mask marks pixels to ignore; only an edit that used them as its region (or
    --dataset-masks True) makes them the object region of the background metrics."""
    image = torch.rand(32, 32, 3)
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1.0
    view = RenderedView("v.png", image, image, mask, torch.zeros(4, 4, 6), torch.zeros(4, 4, 6))
    regions, info = edit_regions([view], threshold=0.35, dilation=0, dataset_masks=True)
    assert info["source"] == "dataset masks" and regions is not None and 0.2 < info["coverage"] < 0.3
    regions, info = edit_regions([view], threshold=0.35, dilation=0, dataset_masks=False)
    assert regions is None and "--dataset-masks True" in info["reason"] and "\n" not in info["reason"]


def test_ednerf_eval_follows_the_edit_on_dataset_masks(trained_run, edited_run, tmp_path):
    config = yaml.load((edited_run / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.pipeline.model.mask_source == "dataset"
    config.pipeline.model.mask_source = "auto"  # the same weights, as an edit that ignored the dataset's masks
    unmasked = tmp_path / "unmasked"
    unmasked.mkdir()
    (unmasked / "config.yml").write_text(yaml.dump(config))
    shutil.copytree(edited_run / "nerfstudio_models", unmasked / "nerfstudio_models")
    common = dict(source=trained_run, output_dir=tmp_path / "out", clip=False, split="train", max_views=2)
    result = main(EvalConfig(edited=unmasked, **common))
    assert result["metrics"]["background_psnr"] is None and result["edit_region"]["source"] is None
    result = main(EvalConfig(edited=unmasked, dataset_masks=True, **common))
    assert result["edit_region"]["source"] == "dataset masks" and result["metrics"]["background_psnr"] > 10


def test_masked_ssim_and_directional_similarity():
    a = torch.rand(24, 24, 3)
    b = a.clone()
    b[:, 12:] = 1 - b[:, 12:]
    left = torch.zeros(24, 24, dtype=torch.bool)
    left[:, :6] = True
    assert masked_ssim(b, a, left) == pytest.approx(1.0, abs=1e-5)
    assert masked_ssim(b, a, ~left) < 0.9
    assert torch.isnan(masked_ssim(b, a, torch.zeros(24, 24)))
    img = torch.randn(3, 8)
    txt_src, txt_tgt = torch.randn(8), torch.randn(8)
    sim = directional_similarity(img, img + (txt_tgt / txt_tgt.norm() - txt_src / txt_src.norm()), txt_src, txt_tgt)
    assert sim.shape == (3,) and bool(torch.all(sim > 0))
    assert bool(torch.isnan(directional_similarity(img, img, txt_src, txt_tgt)).all())
    assert bool(torch.isnan(directional_similarity(img, img + 1, txt_src, txt_src)).all())


def _camera(eye: list[float]):
    from nerfstudio.cameras.cameras import Cameras

    from ednerf_ns.ops.cameras import look_at

    c2w = look_at(torch.tensor([eye]), torch.tensor([[0.0, 0.0, 0.0]]))
    return Cameras(camera_to_worlds=c2w, fx=40.0, fy=44.0, cx=25.5, cy=22.0, width=48, height=40)


def _render_plane(camera) -> tuple[torch.Tensor, torch.Tensor]:
    """The ground plane z = 0 with a smooth texture of world x, y: image and depth along unit rays."""
    rays = camera.generate_rays(camera_indices=0, keep_shape=True)
    t = -rays.origins[..., 2] / rays.directions[..., 2]
    p = rays.origins + t[..., None] * rays.directions
    image = torch.stack([torch.sin(2 * p[..., 0]), torch.cos(1.5 * p[..., 1]), torch.sin(p[..., 0] + p[..., 1])], -1)
    return image * 0.5 + 0.5, t


def test_reprojection_matches_an_analytic_scene():
    view_i, view_j = _camera([1.2, 0.3, 1.8]), _camera([0.9, 1.0, 1.7])
    image_i, depth_i = _render_plane(view_i)
    image_j, depth_j = _render_plane(view_j)
    warped, valid = reproject(image_j, depth_j, view_j, depth_i, view_i)
    assert 0.5 < valid.float().mean() < 1.0  # the views overlap, partly
    assert (warped - image_i).abs()[valid].mean() < 0.01
    same, valid_same = reproject(image_i, depth_i, view_i, depth_i, view_i)
    assert bool(valid_same.all()) and torch.allclose(same, image_i, atol=1e-4)
    # A wrong depth (a surface nearer than the one j sees) fails the visibility test.
    _, occluded = reproject(image_j, depth_j, view_j, depth_i * 0.7, view_i)
    assert occluded.float().mean() < 0.05


def test_consistency_is_lower_for_view_dependent_colours():
    cameras = [_camera([1.2, 0.3, 1.8]), _camera([1.1, 0.6, 1.8]), _camera([0.9, 1.0, 1.7])]
    views, blotched = [], []
    for k, camera in enumerate(cameras):
        image, depth = _render_plane(camera)
        views.append(EvalView("v.png", image, image, None, torch.zeros(4, 5, 6), torch.zeros(4, 5, 6), depth, camera))
        tinted = (image + torch.tensor([0.1, -0.1, 0.05]) * (k - 1)).clamp(0, 1)  # a colour that changes per view
        blotched.append(EvalView("v.png", tinted, image, None, views[-1].latent, views[-1].latent, depth, camera))
    pairs = [(0, 1), (1, 2)]
    region = [torch.ones(40, 48, dtype=torch.bool)] * 3
    clean = consistency(views, pairs, region, tolerance=0.05)
    worse = consistency(blotched, pairs, region, tolerance=0.05)
    assert clean["psnr"] > 35 and worse["psnr"] < 25 and clean["psnr_in_region"] == clean["psnr"]
    assert 0.5 < clean["valid_fraction"] <= 1.0
