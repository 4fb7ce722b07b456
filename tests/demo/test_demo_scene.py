"""Procedural demo scenes: determinism, geometry, camera convention, nerfstudio dataset format, colour scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ednerf_ns.demo import colors as C
from ednerf_ns.demo import scene as S

RES = 48


def _front_camera(dist: float, height: float) -> torch.Tensor:
    """Camera on the -y axis at `height`, looking horizontally at (0, 0, height)."""
    eye = torch.tensor([[0.0, -dist, height]])
    target = torch.tensor([[0.0, 0.0, height]])
    return S.look_at(eye, target)


def _spec(shape: str, color: str, floor: str = S.FLOORS[0], **kw) -> S.SceneSpec:
    return S.SceneSpec(objects=[S.ObjectSpec(shape, color, **kw)], floor=floor)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_captions() -> None:
    assert S.caption(_spec("sphere", "red")) == "a red sphere on a gray checkered floor"
    two = S.SceneSpec(
        objects=[S.ObjectSpec("cube", "orange"), S.ObjectSpec("cylinder", "blue", position=(1.0, 0.0))],
        floor="wooden floor",
    )
    assert S.caption(two) == "an orange cube and a blue cylinder on a wooden floor"
    three = S.random_scene(3, num_objects=3)
    cap = S.caption(three)
    assert cap.count(",") == 1 and " and " in cap and cap.endswith(three.floor)


def test_random_scene_is_seeded_and_json_roundtrips(tmp_path: Path) -> None:
    a, b, c = S.random_scene(5), S.random_scene(5), S.random_scene(6)
    assert a == b
    assert a != c
    multi = S.random_scene(1, num_objects=3)
    assert len({o.color for o in multi.objects}) == 3  # distinct colours per scene
    back = S.SceneSpec.from_dict(json.loads(json.dumps(multi.to_dict())))
    assert back == multi


def test_camera_rays_match_nerfstudio() -> None:
    from nerfstudio.cameras.cameras import Cameras, CameraType

    c2w = S.orbit_cameras(3, seed=1)
    f = S.focal_from_fov(40, 50.0)
    cams = Cameras(
        camera_to_worlds=c2w, fx=f, fy=1.1 * f, cx=17.0, cy=21.0, width=40, height=36,
        camera_type=CameraType.PERSPECTIVE,
    )  # fmt: skip
    bundle = cams.generate_rays(camera_indices=1)
    o, d = S.camera_rays(c2w[1:2], f, 1.1 * f, 17.0, 21.0, 36, 40)
    assert torch.allclose(bundle.directions.reshape(-1, 3), d[0], atol=1e-5)
    assert torch.allclose(bundle.origins.reshape(-1, 3), o[0], atol=1e-6)


def test_sphere_and_cube_silhouettes_match_geometry() -> None:
    res, dist = 96, 4.0
    f = S.focal_from_fov(res, 40.0)
    # Sphere of radius r centred at height r: silhouette is a disc of radius f * tan(asin(r / d)).
    r = 0.5
    _, ids = S.render(_spec("sphere", "red", size=r), _front_camera(dist, r), f, f, res / 2, res / 2, res, res)
    expected = math.pi * (f * math.tan(math.asin(r / dist))) ** 2
    assert abs(float((ids > 0).sum()) - expected) / expected < 0.05
    # Face-on cube (yaw 0) of half edge s: its front face is a square of side 2 s f / (d - s) (one ray per pixel
    # centre, finer pixels: the count is then exact up to one pixel row / column).
    s, res2 = 0.4, 2 * res
    f2 = S.focal_from_fov(res2, 40.0)
    cam = _front_camera(dist, s)
    _, ids = S.render(_spec("cube", "blue", size=s), cam, f2, f2, res, res, res2, res2, supersample=1)
    side = 2 * s * f2 / (dist - s)
    assert abs(float((ids > 0).sum()) - side**2) / side**2 < 0.04
    # Rotating the cube by 45 degrees widens its silhouette.
    _, ids45 = S.render(_spec("cube", "blue", size=s, yaw_deg=45.0), cam, f2, f2, res, res, res2, res2, supersample=1)
    width = lambda m: int(m.any(dim=0).sum())  # noqa: E731
    assert width(ids45[0] > 0) > width(ids[0] > 0) * 1.2
    # A cylinder seen from above shows its (lit) top cap: the pixel at the image centre is the object.
    cam = S.look_at(torch.tensor([[0.0, -1.0, 3.0]]), torch.tensor([[0.0, 0.0, 1.0]]))
    _, ids = S.render(_spec("cylinder", "green", size=0.4, height=1.0), cam, f, f, res / 2, res / 2, res, res)
    assert int(ids[0, res // 2, res // 2]) == 1


def test_batched_render_equals_single_renders() -> None:
    specs = [S.random_scene(i) for i in range(3)]
    cams = S.random_cameras(3, 11)
    f = S.focal_from_fov(RES, 50.0)
    rgb, ids = S.render(specs, cams, f, f, RES / 2, RES / 2, RES, RES, supersample=2)
    assert rgb.shape == (3, RES, RES, 3) and ids.shape == (3, RES, RES)
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    for i in range(3):
        r1, i1 = S.render(specs[i], cams[i : i + 1], f, f, RES / 2, RES / 2, RES, RES, supersample=2)
        assert torch.allclose(r1[0], rgb[i], atol=1e-5)
        assert torch.equal(i1[0], ids[i])
    # A SceneBatch made from the specs renders identically too.
    rgb_b, _ = S.render(S.SceneBatch.from_specs(specs), cams, f, f, RES / 2, RES / 2, RES, RES, supersample=2)
    assert torch.allclose(rgb_b, rgb, atol=1e-6)


def test_object_ids_cover_the_coloured_pixels() -> None:
    scenes = S.random_scene_batch(8, 3, num_objects=1)
    cams = S.random_cameras(8, 4)
    f = S.focal_from_fov(64, 50.0)
    rgb, ids = S.render(scenes, cams, f, f, 32.0, 32.0, 64, 64, supersample=2)
    for i in range(8):
        obj = ids[i] > 0
        colourful = C.colorful_mask(rgb[i])
        assert int(obj.sum()) > 20
        iou = float((obj & colourful).sum()) / float((obj | colourful).sum())
        assert iou > 0.85, iou
    # Two objects get their own ids.
    two = S.random_scene(2, num_objects=2)
    cam = S.look_at(torch.tensor([[0.0, -3.5, 3.0]]), torch.tensor([[0.0, 0.0, 0.3]]))
    _, ids2 = S.render(two, cam, f, f, 32.0, 32.0, 64, 64)
    assert set(ids2.unique().tolist()) == {0, 1, 2}


def test_dataset_is_deterministic(tmp_path: Path) -> None:
    spec = S.random_scene(7)
    kw = {"num_views": 5, "resolution": 32, "supersample": 2}
    a = _files(S.write_nerfstudio_dataset(spec, tmp_path / "a", seed=3, **kw))
    b = _files(S.write_nerfstudio_dataset(spec, tmp_path / "b", seed=3, **kw))
    c = _files(S.write_nerfstudio_dataset(spec, tmp_path / "c", seed=4, **kw))
    assert a == b
    assert a["transforms.json"] != c["transforms.json"]
    assert len([k for k in a if k.startswith("images/")]) == 5


def test_dataset_loads_with_nerfstudio_and_masks_match(tmp_path: Path) -> None:
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    spec = _spec("sphere", "red", floor="wooden floor")
    n, res = 10, 32
    out = S.write_nerfstudio_dataset(spec, tmp_path / "ds", num_views=n, resolution=res, seed=0, supersample=2)
    train = NerfstudioDataParserConfig(data=out).setup().get_dataparser_outputs("train")
    val = NerfstudioDataParserConfig(data=out).setup().get_dataparser_outputs("val")
    assert len(train.image_filenames) + len(val.image_filenames) == n
    assert train.mask_filenames is not None and len(train.mask_filenames) == len(train.image_filenames)
    assert int(train.cameras.width[0]) == res and int(train.cameras.height[0]) == res
    assert abs(float(train.cameras.fx[0]) - S.focal_from_fov(res, 50.0)) < 1e-3

    meta = json.loads((out / "transforms.json").read_text())
    scene_meta = json.loads((out / "scene.json").read_text())
    assert scene_meta["caption"] == "a red sphere on a wooden floor"
    assert S.load_scene_json(out) == spec
    # Re-render frame 0 from its transform_matrix: the mask file marks exactly the object pixels.
    c2w = torch.tensor(meta["frames"][0]["transform_matrix"])[None]
    rgb, ids = S.render(spec, c2w, meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], res, res, supersample=2)
    mask = np.array(Image.open(out / meta["frames"][0]["mask_path"]))
    assert mask.ndim == 2 and set(np.unique(mask).tolist()) <= {0, 255}
    assert np.array_equal(mask == 255, (ids[0] > 0).numpy())
    img = np.array(Image.open(out / meta["frames"][0]["file_path"]))
    assert np.abs(img.astype(np.float32) / 255.0 - rgb[0].numpy()).max() <= 0.5 / 255.0 + 1e-6
    assert C.dominant_color(img.astype(np.float32) / 255.0, mask > 0) == "red"

    # With an explicit split, nerfstudio follows it.
    out2 = S.write_nerfstudio_dataset(spec, tmp_path / "ds2", num_views=n, resolution=res, write_split=True)
    val2 = NerfstudioDataParserConfig(data=out2).setup().get_dataparser_outputs("val")
    assert len(val2.image_filenames) == len(json.loads((out2 / "transforms.json").read_text())["val_filenames"])


@pytest.mark.parametrize("color", C.COLOR_NAMES)
def test_color_score_of_rendered_spheres(color: str) -> None:
    f = S.focal_from_fov(RES, 50.0)
    cam = S.look_at(torch.tensor([[1.5, -2.5, 1.6]]), torch.tensor([[0.0, 0.0, 0.45]]))
    rgb, ids = S.render(_spec("sphere", color, size=0.45), cam, f, f, RES / 2, RES / 2, RES, RES, supersample=2)
    mask = ids[0] > 0
    assert C.dominant_color(rgb[0], mask) == color
    assert C.object_color_score(rgb[0], mask, color) > 0.9
    others = [c for c in C.COLOR_NAMES if c != color]
    assert max(C.object_color_score(rgb[0], mask, c) for c in others) < 0.1
    # numpy input works the same.
    assert C.object_color_score(rgb[0].numpy(), mask.numpy(), color) == C.object_color_score(rgb[0], mask, color)


def test_color_score_edge_cases() -> None:
    gray = torch.full((8, 8, 3), 0.5)
    mask = torch.ones(8, 8, dtype=torch.bool)
    assert C.object_color_score(gray, mask, "red") == 0.0
    assert C.dominant_color(gray, mask) == "none"
    assert C.object_color_score(gray, torch.zeros(8, 8, dtype=torch.bool), "red") == 0.0
    # A mostly gray object with a few red pixels does not score as red.
    img = gray.clone()
    img[0, :3] = torch.tensor([0.9, 0.1, 0.1])
    assert C.object_color_score(img, mask, "red") < 0.25
    with pytest.raises(ValueError):
        C.object_color_score(img, mask, "teal")
    # Shading keeps the hue: a dark red is still red.
    dark = torch.tensor([0.86, 0.1, 0.1]) * 0.25
    assert C.dominant_color(dark.expand(8, 8, 3), mask) == "red"
