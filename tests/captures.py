"""Capture-shaped datasets for tests: photo-sized images, lens distortion, RGBA, colmap layouts.

The procedural scene (ednerf_ns.demo.scene) is ray-cast through an ideal pinhole camera; a lens is simulated by
resampling that image at the undistorted position of every distorted pixel (OpenCV's model, nerfstudio's pixel
centres at +0.5), so the pinhole render with the undistorted camera is the ground truth of what undistortion must
recover.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ednerf_ns.demo.scene import ObjectSpec, SceneSpec, focal_from_fov, orbit_cameras, render

SPEC = SceneSpec(objects=[ObjectSpec("sphere", "red", size=0.6)])
DISTORTION = (-0.08, 0.01, 0.001, -0.0015)  # k1, k2, p1, p2: a mild barrel lens, as on a phone's main camera
PAD = 64  # pixels rendered beyond the frame: a barrel lens sees a little more than its pinhole


@dataclass
class Capture:
    data: Path
    poses: torch.Tensor
    """[N, 3, 4] OpenGL camera-to-world of every frame, in the scene's own coordinates."""
    fx: float
    cx: float
    cy: float


def pinhole_render(c2w: torch.Tensor, fx: float, fy: float, cx: float, cy: float, height: int, width: int, ss: int = 1):
    """rgb [N, H, W, 3] float, object mask [N, H, W] bool (ss x ss samples per pixel)."""
    rgb, ids = render(SPEC, c2w, fx, fy, cx, cy, height, width, device="cpu", supersample=ss)
    return rgb, ids > 0


def distort(pinhole: np.ndarray, fx: float, cx: float, cy: float, width: int, height: int, dist) -> np.ndarray:
    """A distorted [height, width, C] image from a pinhole render padded by PAD on every side."""
    import cv2

    k = np.array([[fx, 0, cx - 0.5], [0, fx, cy - 0.5], [0, 0, 1]], dtype=np.float64)  # OpenCV: centres at 0
    jj, ii = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    points = np.stack([jj.ravel(), ii.ravel()], axis=-1)[:, None, :]
    coeffs = np.array([dist[0], dist[1], dist[2], dist[3], 0.0])
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-9)
    ideal = cv2.undistortPointsIter(points, k, coeffs, None, k, criteria).reshape(height, width, 2)
    map_x, map_y = (ideal[..., 0] + PAD).astype(np.float32), (ideal[..., 1] + PAD).astype(np.float32)
    return cv2.remap(pinhole, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def write_capture(
    out: Path,
    width: int = 1024,
    height: int = 768,
    views: int = 5,
    distortion: tuple[float, float, float, float] | None = DISTORTION,
    rgba: bool = False,
    layout: str = "nerfstudio",
    colmap_format: str = ".txt",
    downscaled: tuple[int, ...] = (),
    seed: int = 0,
) -> Capture:
    """Write a capture of the sphere scene: nerfstudio layout (transforms.json, OPENCV camera) or colmap layout
    (images/ + sparse/0 in `colmap_format`, optional images_N folders). Frame 0 is the held-out view."""
    out.mkdir(parents=True, exist_ok=True)
    c2w = orbit_cameras(views, 3.2, (15.0, 40.0), SPEC.center(), seed)
    fx = focal_from_fov(width, 55.0)
    cx, cy = width / 2.0 + 3.0, height / 2.0 - 2.0  # principal point slightly off-centre, as calibrated
    pad = PAD if distortion is not None else 0
    rgb, obj = pinhole_render(c2w, fx, fx, cx + pad, cy + pad, height + 2 * pad, width + 2 * pad)
    images = (out / "images").mkdir(exist_ok=True) or out / "images"
    names = []
    for i in range(views):
        pixels = (rgb[i].numpy() * 255).round().astype(np.uint8)
        alpha = obj[i].numpy().astype(np.uint8) * 255
        if distortion is not None:
            pixels = distort(pixels, fx, cx, cy, width, height, distortion)
            alpha = distort(alpha, fx, cx, cy, width, height, distortion)
        if rgba:  # transparent background whose hidden colour must never show: magenta
            pixels = np.where(alpha[..., None] > 0, pixels, np.array([255, 0, 255], dtype=np.uint8))
            pixels = np.concatenate([pixels, alpha[..., None]], axis=-1)
        name = f"frame_{i:05d}.png"
        Image.fromarray(pixels).save(images / name)
        for factor in downscaled:
            folder = out / f"images_{factor}"
            folder.mkdir(exist_ok=True)
            Image.fromarray(pixels).resize((width // factor, height // factor), Image.Resampling.BILINEAR).save(
                folder / name
            )
        names.append(name)
    k = dict(zip(("k1", "k2", "p1", "p2"), distortion or (0.0, 0.0, 0.0, 0.0), strict=True))
    if layout == "nerfstudio":
        frames = [
            {
                "file_path": f"images/{n}",
                "transform_matrix": torch.cat([c2w[i], torch.tensor([[0, 0, 0, 1.0]])]).tolist(),
            }
            for i, n in enumerate(names)
        ]
        meta = {"camera_model": "OPENCV", "fl_x": fx, "fl_y": fx, "cx": cx, "cy": cy, "w": width, "h": height, **k}
        meta.update(frames=frames, train_filenames=[f"images/{n}" for n in names[1:]])
        meta["val_filenames"] = meta["test_filenames"] = [f"images/{names[0]}"]
        (out / "transforms.json").write_text(json.dumps(meta, indent=1))
    else:
        write_colmap_model(out / "sparse" / "0", c2w, names, fx, cx, cy, width, height, k, colmap_format)
    return Capture(out, c2w, fx, cx, cy)


def write_colmap_model(folder: Path, c2w, names, fx, cx, cy, width, height, k: dict, ext: str) -> None:
    """cameras / images / points3D as COLMAP writes them (nerfstudio's colmap utilities), one OPENCV camera."""
    from nerfstudio.data.utils import colmap_parsing_utils as cu

    folder.mkdir(parents=True, exist_ok=True)
    # COLMAP's principal point is in pixel-corner coordinates, like nerfstudio's
    params = np.array([fx, fx, cx, cy, k["k1"], k["k2"], k["p1"], k["p2"]])
    cameras = {1: cu.Camera(id=1, model="OPENCV", width=width, height=height, params=params)}
    images = {}
    for i, name in enumerate(names):
        pose = np.eye(4)
        pose[:3] = c2w[i].numpy()
        pose[:3, 1:3] *= -1  # OpenGL -> OpenCV camera axes
        w2c = np.linalg.inv(pose)
        images[i + 1] = cu.Image(
            id=i + 1,
            qvec=cu.rotmat2qvec(w2c[:3, :3]),
            tvec=w2c[:3, 3],
            camera_id=1,
            name=name,
            xys=np.zeros((0, 2)),
            point3D_ids=np.zeros(0, dtype=np.int64),
        )
    rng = np.random.default_rng(0)
    points = {
        j + 1: cu.Point3D(
            id=j + 1,
            xyz=rng.uniform(-0.5, 0.5, 3),
            rgb=np.array([200, 30, 30]),
            error=0.5,
            image_ids=np.array([1, 2]),
            point2D_idxs=np.array([0, 0]),
        )
        for j in range(16)
    }
    cu.write_model(cameras, images, points, str(folder), ext=ext)
