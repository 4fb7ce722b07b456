"""Before/after orbit animations of an edit, written without any system tool.

An orbit of cameras around what the training cameras look at is rendered from the source run and from the edited
run; each frame shows both side by side under the two prompts. The animation is written as an animated GIF
(Pillow, plays in every browser and image viewer) and as an H.264 MP4 through imageio-ffmpeg, whose wheel ships
its own ffmpeg binary (no system ffmpeg needed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ednerf_ns.errors import first_line, warn
from ednerf_ns.ops.cameras import look_at

VIDEO_FORMATS = ("gif", "mp4")


# ------------------------------------------------------------------------------------------------------------ cameras


def orbit_center(camera_to_worlds: Tensor) -> Tensor | None:
    """The point closest (least squares) to every camera's optical axis: what the cameras look at. None when the
    axes are (nearly) parallel, as in a forward-facing capture."""
    origins = camera_to_worlds[:, :3, 3].double()
    forward = -torch.nn.functional.normalize(camera_to_worlds[:, :3, 2].double(), dim=-1)
    projector = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]  # [N, 3, 3]
    a, b = projector.sum(0), (projector @ origins[:, :, None]).sum(0)[:, 0]
    if torch.linalg.cond(a) > 1e6:
        return None
    center = torch.linalg.solve(a, b)
    spread = (origins - origins.mean(0)).norm(dim=-1).max().clamp_min(1e-6)
    if (center - origins.mean(0)).norm() > 20 * spread:
        return None
    return center.float()


def orbit_poses(camera_to_worlds: Tensor, frames: int) -> Tensor:
    """[frames, 3, 4] camera-to-world poses going once around the training cameras' centre, at their mean height
    and distance, looking at the centre. Forward-facing captures (no common centre) get a small circle around
    the mean camera instead, looking where it looks."""
    c2w = camera_to_worlds[:, :3, :4].float()
    origins = c2w[:, :, 3]
    up = torch.nn.functional.normalize(c2w[:, :, 1].mean(0), dim=0)
    angles = torch.arange(frames, dtype=torch.float32) * (2 * math.pi / frames)
    center = orbit_center(c2w)
    if center is None:
        mean_origin, forward = origins.mean(0), -torch.nn.functional.normalize(c2w[:, :, 2].mean(0), dim=0)
        right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=0)
        radius = max(float((origins - mean_origin).norm(dim=-1).mean()), 1e-3)
        eyes = mean_origin + radius * (torch.cos(angles)[:, None] * right + torch.sin(angles)[:, None] * up)
        target = mean_origin + forward * 4 * radius
        return look_at(eyes, target.expand_as(eyes), up.expand_as(eyes))
    offsets = origins - center
    height = float((offsets @ up).mean())
    radial = offsets - (offsets @ up)[:, None] * up
    radius = float(radial.norm(dim=-1).mean())
    first = torch.nn.functional.normalize(radial[0], dim=0)
    second = torch.linalg.cross(up, first)
    eyes = center + height * up + radius * (torch.cos(angles)[:, None] * first + torch.sin(angles)[:, None] * second)
    return look_at(eyes, center.expand_as(eyes), up.expand_as(eyes))


def orbit_cameras_of(cameras, frames: int, max_size: int = 0):
    """nerfstudio Cameras on the orbit of `orbit_poses`, with the first training camera's intrinsics (scaled so the
    longer side is at most `max_size` pixels when > 0)."""
    from nerfstudio.cameras.cameras import Cameras

    first = cameras[0:1]
    scale = 1.0
    longest = int(max(first.width.max(), first.height.max()))
    if max_size > 0 and longest > max_size:
        scale = max_size / longest
    poses = orbit_poses(cameras.camera_to_worlds.cpu(), frames)
    ones = torch.ones(frames, 1)
    return Cameras(
        camera_to_worlds=poses,
        fx=ones * float(first.fx) * scale,
        fy=ones * float(first.fy) * scale,
        cx=ones * float(first.cx) * scale,
        cy=ones * float(first.cy) * scale,
        width=(ones * round(int(first.width) * scale)).long(),
        height=(ones * round(int(first.height) * scale)).long(),
        camera_type=first.camera_type.expand(frames, 1),
    )


@torch.no_grad()
def render_orbit(pipeline, cameras, on_frame: Callable[[], None] | None = None) -> list[np.ndarray]:
    """[H, W, 3] uint8 RGB renders of `pipeline` at each camera."""
    frames = []
    for i in range(len(cameras)):
        out = pipeline.model.get_outputs_for_camera(cameras[i : i + 1].to(pipeline.device))
        frames.append((out["rgb"].float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
        if on_frame is not None:
            on_frame()
    return frames


# ------------------------------------------------------------------------------------------------------------ frames


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def side_by_side(before: np.ndarray, after: np.ndarray, captions: Sequence[str], gap: int = 4) -> np.ndarray:
    """[H', W', 3] uint8: `before` and `after` next to each other on white, each under its caption."""
    height, width = before.shape[:2]
    font_size = max(10, min(18, width // 16))
    font = _font(font_size)
    strip = 2 * font_size + 4
    canvas = Image.new("RGB", (2 * width + gap, height + strip), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, text) in enumerate(zip((before, after), captions, strict=True)):
        x = i * (width + gap)
        canvas.paste(Image.fromarray(image), (x, strip))
        draw.text((x + 2, 2), _fit(draw, text, font, width - 4), fill="black", font=font)
    return np.asarray(canvas)


def pad_to(frame: np.ndarray, multiple: int) -> np.ndarray:
    """Pad with white so both sides are multiples of `multiple` (H.264 in yuv420p needs even sides)."""
    h, w = frame.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return frame
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), constant_values=255)


# ------------------------------------------------------------------------------------------------------------ writers


def _replace_when_written(path: Path, write: Callable[[Path], None]) -> Path:
    """Write to a temporary file next to `path`, then rename: never a half-written video under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_gif(frames: Sequence[np.ndarray], path: Path, fps: float) -> Path:
    """Looping animated GIF through Pillow."""
    images = [Image.fromarray(f) for f in frames]

    def write(tmp: Path) -> None:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)

    return _replace_when_written(path, write)


def write_mp4(frames: Sequence[np.ndarray], path: Path, fps: float) -> Path:
    """H.264 MP4 (yuv420p, plays everywhere) through the ffmpeg binary that the imageio-ffmpeg wheel ships."""
    import imageio_ffmpeg

    padded = [pad_to(f, 16) for f in frames]
    h, w = padded[0].shape[:2]

    def write(tmp: Path) -> None:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=8, macro_block_size=16,
            output_params=["-movflags", "+faststart"],
        )  # fmt: skip
        writer.send(None)
        for frame in padded:
            writer.send(np.ascontiguousarray(frame))
        writer.close()

    return _replace_when_written(path, write)


def write_animation(frames: Sequence[np.ndarray], stem: Path, fps: float, formats: Sequence[str]) -> list[Path]:
    """`stem`.gif / `stem`.mp4 for each of `formats`; a format whose writer fails is skipped with a warning."""
    written = []
    for fmt in formats:
        writer = write_gif if fmt == "gif" else write_mp4
        try:
            written.append(writer(frames, stem.with_suffix(f".{fmt}"), fps))
        except (ImportError, RuntimeError, OSError) as exc:
            warn(f"could not write the {fmt.upper()} animation: {first_line(exc)}")
    return written


def before_after_animation(
    source_pipeline,
    edited_pipeline,
    captions: Sequence[str],
    out: Path,
    frames: int = 48,
    fps: float = 12.0,
    max_size: int = 0,
    formats: Sequence[str] = VIDEO_FORMATS,
    on_frame: Callable[[], None] | None = None,
) -> tuple[list[Path], np.ndarray]:
    """Render the orbit from both runs and write `out`/before_after.{gif,mp4}; returns the files written and the
    first frame (a still for a page or a report)."""
    cameras = orbit_cameras_of(source_pipeline.datamanager.train_dataset.cameras, frames, max_size)
    before = render_orbit(source_pipeline, cameras, on_frame)
    after = render_orbit(edited_pipeline, cameras, on_frame)
    composed = [side_by_side(b, a, captions) for b, a in zip(before, after, strict=True)]
    return write_animation(composed, out / "before_after", fps, formats), composed[0]
