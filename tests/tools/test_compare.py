"""Before/after orbits: the orbit geometry, and `ednerf-compare` writing a GIF and an MP4 without a system ffmpeg."""

from __future__ import annotations

import math
import shutil

import numpy as np
import torch
from conftest import run_cli
from PIL import Image

from ednerf_ns.demo.scene import orbit_cameras
from ednerf_ns.tools.video import orbit_center, orbit_poses, side_by_side


def test_orbit_goes_around_what_the_cameras_look_at():
    target = torch.tensor([0.3, -0.2, 0.45])
    training = orbit_cameras(20, radius=3.0, elevation_range=(20.0, 40.0), look_at_point=tuple(target.tolist()))
    assert torch.allclose(orbit_center(training), target, atol=1e-3)
    poses = orbit_poses(training, 12)
    eyes = poses[:, :, 3]
    forward = -poses[:, :, 2]
    to_target = torch.nn.functional.normalize(target - eyes, dim=-1)
    assert torch.allclose((forward * to_target).sum(-1), torch.ones(12), atol=1e-4)  # every frame looks at it
    distances = (eyes - target).norm(dim=-1)
    assert float(distances.std()) < 1e-4 and abs(float(distances.mean()) - 3.0) < 0.1
    chords = (eyes - eyes.roll(1, dims=0)).norm(dim=-1)  # once around a circle, evenly, closing on itself
    assert float(chords.std()) < 1e-4
    radius = float((eyes - eyes.mean(0)).norm(dim=-1).mean())
    assert abs(float(chords[0]) - 2 * radius * math.sin(math.pi / 12)) < 1e-3


def test_forward_facing_cameras_get_a_small_circle():
    poses = orbit_cameras(8, radius=3.0)[:1].repeat(8, 1, 1)  # eight identical cameras: no common centre
    poses[:, 0, 3] += torch.linspace(-0.1, 0.1, 8)
    assert orbit_center(poses) is None
    orbit = orbit_poses(poses, 6)
    assert (orbit[:, :, 3] - poses[:, :, 3].mean(0)).norm(dim=-1).max() < 0.2


def test_frames_are_side_by_side_under_the_prompts():
    before = np.zeros((32, 40, 3), np.uint8)
    after = np.full((32, 40, 3), 200, np.uint8)
    frame = side_by_side(before, after, ("before: a red sphere", "after: a blue sphere"))
    strip = frame.shape[0] - 32
    assert frame.shape[1] == 84 and strip > 0
    assert (frame[strip:, :40] == 0).all() and (frame[strip:, 44:] == 200).all()
    assert (frame[:strip] < 128).any()  # the captions are drawn


def test_ednerf_compare_writes_gif_and_mp4_without_system_ffmpeg(trained_run, edited_run, tmp_path, cache_dir):
    import imageio_ffmpeg

    out = tmp_path / "compare"
    args = ["-m", "ednerf_ns.tools.compare", "--source", str(trained_run), "--edited", str(edited_run)]
    no_tools = tmp_path / "empty_bin"  # PATH without any ffmpeg: the MP4 must come from imageio-ffmpeg's binary
    no_tools.mkdir()
    assert shutil.which("ffmpeg", path=str(no_tools)) is None
    env = {"PATH": str(no_tools)}
    result = run_cli([*args, "--output-dir", str(out), "--frames", "6", "--fps", "6"], cache_dir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("before_after.gif", "before_after.mp4", "before_after.png"):
        assert str(out / name) in result.stdout.replace("\n", "")
    with Image.open(out / "before_after.gif") as gif:
        assert gif.n_frames == 6 and gif.size[0] == 2 * 64 + 4
    reader = imageio_ffmpeg.read_frames(str(out / "before_after.mp4"))
    meta = next(reader)
    assert meta["codec"] == "h264" and sum(1 for _ in reader) == 6
    assert not list(out.glob(".*partial*"))
