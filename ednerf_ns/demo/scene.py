"""Deterministic procedural 3D scenes (coloured primitives on a textured floor), ray cast analytically in torch.

World frame: z up, the floor is the plane z = 0, objects stand on it near the origin. Cameras follow the
OpenGL / nerfstudio convention (camera looks down its -z axis, +y is up, +x right; `c2w` is camera-to-world).

Everything is batched over views *and* scenes: a `SceneBatch` holds the parameters of B scenes as tensors, so one
`render` call can draw B different random scenes from B random cameras on a GPU (training data for the tiny latent
diffusion model) or many views of one scene on a CPU (the demo's NeRF dataset).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ednerf_ns.demo.colors import COLOR_NAMES, PALETTE
from ednerf_ns.ops.cameras import look_at

SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder")
FLOORS: tuple[str, ...] = ("gray checkered floor", "wooden floor", "white tiled floor")

# Shape ids inside SceneBatch; 0 marks an empty object slot.
_SHAPE_ID = {name: i + 1 for i, name in enumerate(SHAPES)}
_INF = float("inf")
# Ray offsets and epsilons in world units (objects are ~1 unit large).
_EPS = 1e-4
_SHADOW_BIAS = 2e-3
_AMBIENT = 0.33


@dataclass
class ObjectSpec:
    """One primitive standing on the floor."""

    shape: str
    """One of SHAPES: "sphere", "cube" or "cylinder"."""
    color: str
    """One of the palette names in colors.COLOR_NAMES."""
    position: tuple[float, float] = (0.0, 0.0)
    """(x, y) of the object's footprint centre on the floor (world units)."""
    size: float = 0.5
    """Sphere radius, cube half edge, or cylinder radius."""
    height: float = 1.0
    """Cylinder height (full); ignored by spheres and cubes."""
    yaw_deg: float = 0.0
    """Rotation about the vertical axis in degrees (visible for cubes only)."""


@dataclass
class SceneSpec:
    """A whole scene: objects, floor, light and sky. JSON-serialisable through `to_dict`/`from_dict`."""

    objects: list[ObjectSpec] = field(default_factory=lambda: [ObjectSpec("sphere", "red")])
    """The primitives (at least one)."""
    floor: str = FLOORS[0]
    """One of FLOORS; the caption uses this text verbatim."""
    floor_offset: tuple[float, float] = (0.0, 0.0)
    """Shift of the floor texture (world units), so floors of one type differ between scenes."""
    light_dir: tuple[float, float, float] = (0.4, -0.3, 0.866)
    """Direction towards the (directional) light, world frame; normalised when rendered."""
    sky_top: tuple[float, float, float] = (0.62, 0.70, 0.80)
    """Sky colour straight up; kept low in saturation so it is never mistaken for an object colour."""
    sky_horizon: tuple[float, float, float] = (0.86, 0.88, 0.90)
    """Sky colour at the horizon; distant floor fades towards it."""

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> SceneSpec:
        objs = [
            ObjectSpec(
                shape=o["shape"],
                color=o["color"],
                position=tuple(o["position"]),
                size=float(o["size"]),
                height=float(o.get("height", 1.0)),
                yaw_deg=float(o.get("yaw_deg", 0.0)),
            )
            for o in d["objects"]
        ]
        return SceneSpec(
            objects=objs,
            floor=d["floor"],
            floor_offset=tuple(d.get("floor_offset", (0.0, 0.0))),
            light_dir=tuple(d["light_dir"]),
            sky_top=tuple(d["sky_top"]),
            sky_horizon=tuple(d["sky_horizon"]),
        )

    def center(self) -> tuple[float, float, float]:
        """Point cameras should look at: middle of the objects' footprints, at half their typical height."""
        xs = [o.position[0] for o in self.objects]
        ys = [o.position[1] for o in self.objects]
        hs = [_object_half_height(o) for o in self.objects]
        return (sum(xs) / len(xs), sum(ys) / len(ys), sum(hs) / len(hs))


def _object_half_height(o: ObjectSpec) -> float:
    return 0.5 * o.height if o.shape == "cylinder" else o.size


def caption(spec: SceneSpec) -> str:
    """E.g. "a red sphere on a gray checkered floor", "an orange cube and a blue cylinder on a wooden floor"."""
    names = [f"{_article(o.color)} {o.color} {o.shape}" for o in spec.objects]
    if len(names) == 1:
        things = names[0]
    else:
        things = ", ".join(names[:-1]) + " and " + names[-1]
    return f"{things} on {_article(spec.floor)} {spec.floor}"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


# ----------------------------------------------------------------------------------------------------------------------
# Scene parameters as tensors


@dataclass
class SceneBatch:
    """Parameters of B scenes with up to K objects each, as tensors (empty object slots have shape id 0)."""

    shape: torch.Tensor
    """[B, K] long: 0 empty, 1 sphere, 2 cube, 3 cylinder."""
    color: torch.Tensor
    """[B, K] long: index into colors.COLOR_NAMES."""
    position: torch.Tensor
    """[B, K, 2] float: footprint centre (x, y)."""
    size: torch.Tensor
    """[B, K] float: sphere radius / cube half edge / cylinder radius."""
    height: torch.Tensor
    """[B, K] float: cylinder full height (unused otherwise)."""
    yaw: torch.Tensor
    """[B, K] float: rotation about z in radians."""
    floor: torch.Tensor
    """[B] long: index into FLOORS."""
    floor_offset: torch.Tensor
    """[B, 2] float: texture shift."""
    light_dir: torch.Tensor
    """[B, 3] float: unit direction towards the light."""
    sky_top: torch.Tensor
    """[B, 3] float: sky colour at the zenith."""
    sky_horizon: torch.Tensor
    """[B, 3] float: sky colour at the horizon."""

    @property
    def batch_size(self) -> int:
        return int(self.shape.shape[0])

    def to(self, device: Union[str, torch.device]) -> SceneBatch:
        return SceneBatch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def index(self, idx: torch.Tensor) -> SceneBatch:
        """Select / repeat scenes along the batch axis."""
        return SceneBatch(**{k: v[idx.to(v.device)] for k, v in self.__dict__.items()})

    @staticmethod
    def from_specs(specs: Sequence[SceneSpec], device: Union[str, torch.device] = "cpu") -> SceneBatch:
        b = len(specs)
        k = max(len(s.objects) for s in specs)
        shape = torch.zeros(b, k, dtype=torch.long)
        color = torch.zeros(b, k, dtype=torch.long)
        position = torch.zeros(b, k, 2)
        size = torch.ones(b, k)
        height = torch.ones(b, k)
        yaw = torch.zeros(b, k)
        for i, s in enumerate(specs):
            for j, o in enumerate(s.objects):
                if o.shape not in _SHAPE_ID:
                    raise ValueError(f"unknown shape {o.shape!r}; expected one of {SHAPES}")
                if o.color not in PALETTE:
                    raise ValueError(f"unknown colour {o.color!r}; expected one of {COLOR_NAMES}")
                shape[i, j] = _SHAPE_ID[o.shape]
                color[i, j] = COLOR_NAMES.index(o.color)
                position[i, j] = torch.tensor(o.position, dtype=torch.float32)
                size[i, j] = o.size
                height[i, j] = o.height
                yaw[i, j] = math.radians(o.yaw_deg)
        for s in specs:
            if s.floor not in FLOORS:
                raise ValueError(f"unknown floor {s.floor!r}; expected one of {FLOORS}")
        light = torch.tensor([s.light_dir for s in specs], dtype=torch.float32)
        light = light / light.norm(dim=-1, keepdim=True)
        batch = SceneBatch(
            shape=shape,
            color=color,
            position=position,
            size=size,
            height=height,
            yaw=yaw,
            floor=torch.tensor([FLOORS.index(s.floor) for s in specs], dtype=torch.long),
            floor_offset=torch.tensor([s.floor_offset for s in specs], dtype=torch.float32),
            light_dir=light,
            sky_top=torch.tensor([s.sky_top for s in specs], dtype=torch.float32),
            sky_horizon=torch.tensor([s.sky_horizon for s in specs], dtype=torch.float32),
        )
        return batch.to(device)

    def to_specs(self) -> list[SceneSpec]:
        cpu = self.to("cpu")
        specs = []
        for i in range(cpu.batch_size):
            objs = []
            for j in range(cpu.shape.shape[1]):
                sid = int(cpu.shape[i, j])
                if sid == 0:
                    continue
                objs.append(
                    ObjectSpec(
                        shape=SHAPES[sid - 1],
                        color=COLOR_NAMES[int(cpu.color[i, j])],
                        position=(_r(cpu.position[i, j, 0]), _r(cpu.position[i, j, 1])),
                        size=_r(cpu.size[i, j]),
                        height=_r(cpu.height[i, j]),
                        yaw_deg=_r(math.degrees(float(cpu.yaw[i, j]))),
                    )
                )
            specs.append(
                SceneSpec(
                    objects=objs,
                    floor=FLOORS[int(cpu.floor[i])],
                    floor_offset=tuple(_r(v) for v in cpu.floor_offset[i]),
                    light_dir=tuple(_r(v) for v in cpu.light_dir[i]),
                    sky_top=tuple(_r(v) for v in cpu.sky_top[i]),
                    sky_horizon=tuple(_r(v) for v in cpu.sky_horizon[i]),
                )
            )
        return specs

    def captions(self) -> list[str]:
        return [caption(s) for s in self.to_specs()]


def _r(x: Union[float, torch.Tensor]) -> float:
    """Round to 6 decimals so specs print and serialise cleanly (and round-trip exactly through JSON)."""
    return round(float(x), 6)


def _make_generator(generator: Union[torch.Generator, int, None]) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    g.manual_seed(0 if generator is None else int(generator))
    return g


def _uniform(g: torch.Generator, shape: Sequence[int], lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """h in [0, 1), s and v in [0, 1] -> [..., 3]."""
    k = torch.stack([(5.0 + h * 6.0) % 6.0, (3.0 + h * 6.0) % 6.0, (1.0 + h * 6.0) % 6.0], dim=-1)
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[..., None] - v[..., None] * s[..., None] * ramp


def random_scene_batch(
    batch_size: int,
    generator: Union[torch.Generator, int, None] = None,
    num_objects: int = 1,
    floors: Sequence[str] = FLOORS,
    colors: Sequence[str] = COLOR_NAMES,
    shapes: Sequence[str] = SHAPES,
    device: Union[str, torch.device] = "cpu",
) -> SceneBatch:
    """Sample `batch_size` random scenes with `num_objects` objects each (vectorised; sampled on the CPU generator).

    Objects of one scene get distinct colours (so a caption names each object unambiguously). A single object sits
    near the origin; several are spread on a ring around it so they never overlap.
    """
    g = _make_generator(generator)
    b, k = batch_size, num_objects
    if k < 1 or k > len(colors):
        raise ValueError(f"num_objects must be in [1, {len(colors)}]")
    shape_ids = torch.tensor([_SHAPE_ID[s] for s in shapes])
    color_ids = torch.tensor([COLOR_NAMES.index(c) for c in colors])
    floor_ids = torch.tensor([FLOORS.index(f) for f in floors])
    shape = shape_ids[torch.randint(len(shapes), (b, k), generator=g)]
    # Distinct colours per scene: the first k entries of a random permutation.
    color = color_ids[torch.argsort(torch.rand(b, len(colors), generator=g), dim=1)[:, :k]]
    base = torch.tensor([0.0, 0.46, 0.40, 0.37])[shape]  # typical footprint radius per shape (index 0 unused)
    size = base * _uniform(g, (b, k), 0.85, 1.2)
    height = _uniform(g, (b, k), 0.75, 1.3)
    yaw = _uniform(g, (b, k), 0.0, 2.0 * math.pi)
    if k == 1:
        position = _uniform(g, (b, 1, 2), -0.25, 0.25)
    else:
        phase = _uniform(g, (b, 1), 0.0, 2.0 * math.pi)
        ang = phase + 2.0 * math.pi * torch.arange(k)[None, :] / k + _uniform(g, (b, k), -0.2, 0.2)
        ring = _uniform(g, (b, 1), 0.8, 0.95)
        position = torch.stack([ring * torch.cos(ang), ring * torch.sin(ang)], dim=-1)
    floor = floor_ids[torch.randint(len(floors), (b,), generator=g)]
    floor_offset = _uniform(g, (b, 2), 0.0, 4.0)
    l_az = _uniform(g, (b,), 0.0, 2.0 * math.pi)
    l_el = _uniform(g, (b,), math.radians(35.0), math.radians(70.0))
    light = torch.stack([torch.cos(l_el) * torch.cos(l_az), torch.cos(l_el) * torch.sin(l_az), torch.sin(l_el)], -1)
    # Sky: light, low-saturation tints (saturation <= 0.22, far below the object palette's).
    hue = _uniform(g, (b,), 0.0, 1.0)
    top = _hsv_to_rgb(hue, _uniform(g, (b,), 0.0, 0.22), _uniform(g, (b,), 0.6, 0.9))
    horizon = _hsv_to_rgb(hue, _uniform(g, (b,), 0.0, 0.1), _uniform(g, (b,), 0.8, 0.95))
    batch = SceneBatch(
        shape=shape,
        color=color,
        position=position,
        size=size,
        height=height,
        yaw=yaw,
        floor=floor,
        floor_offset=floor_offset,
        light_dir=light,
        sky_top=top,
        sky_horizon=horizon,
    )
    return batch.to(device)


def random_scene(generator: Union[torch.Generator, int, None] = None, num_objects: int = 1, **kwargs) -> SceneSpec:
    """One random SceneSpec (same distribution as `random_scene_batch`, values rounded for clean JSON)."""
    return random_scene_batch(1, generator, num_objects=num_objects, **kwargs).to_specs()[0]


# ----------------------------------------------------------------------------------------------------------------------
# Cameras


def _spherical_eye(az: torch.Tensor, el: torch.Tensor, dist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return target + dist[:, None] * torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1
    )


def orbit_cameras(
    n: int,
    radius: float = 3.2,
    elevation_range: tuple[float, float] = (15.0, 45.0),
    look_at_point: tuple[float, float, float] = (0.0, 0.0, 0.45),
    seed: int = 0,
) -> torch.Tensor:
    """[n, 3, 4] camera-to-world poses on an orbit around `look_at_point`, all looking at it.

    Azimuths are evenly spaced (with a seeded jitter of up to a quarter step and a seeded phase); elevations (degrees)
    are spread evenly over the range in a seeded random order, so the views cover the object from several heights.
    """
    g = _make_generator(seed)
    phase = float(torch.rand(1, generator=g)) * 2.0 * math.pi
    jitter = (torch.rand(n, generator=g) - 0.5) * 0.5
    az = phase + 2.0 * math.pi * (torch.arange(n, dtype=torch.float32) + jitter) / n
    lo, hi = elevation_range
    levels = lo + (hi - lo) * (torch.arange(n, dtype=torch.float32) + 0.5) / n
    el = torch.deg2rad(levels[torch.randperm(n, generator=g)])
    target = torch.tensor(look_at_point, dtype=torch.float32).expand(n, 3)
    eye = _spherical_eye(az, el, torch.full((n,), float(radius)), target)
    return look_at(eye, target)


def random_cameras(
    n: int,
    generator: Union[torch.Generator, int, None] = None,
    distance_range: tuple[float, float] = (2.3, 4.2),
    elevation_range: tuple[float, float] = (10.0, 55.0),
    target_jitter: float = 0.3,
    target_height: tuple[float, float] = (0.2, 0.6),
) -> torch.Tensor:
    """[n, 3, 4] random poses around the scene centre: random azimuth, elevation (degrees) and distance, looking at the
    origin moved by up to `target_jitter` horizontally, so the object shows at various sizes and image positions."""
    g = _make_generator(generator)
    az = _uniform(g, (n,), 0.0, 2.0 * math.pi)
    el = torch.deg2rad(_uniform(g, (n,), *elevation_range))
    dist = _uniform(g, (n,), *distance_range)
    target = torch.cat(
        [_uniform(g, (n, 2), -target_jitter, target_jitter), _uniform(g, (n, 1), *target_height)], dim=-1
    )
    return look_at(_spherical_eye(az, el, dist, target), target)


def focal_from_fov(width: int, fov_deg: float) -> float:
    """Pinhole focal length in pixels for a horizontal field of view."""
    return 0.5 * width / math.tan(0.5 * math.radians(fov_deg))


# ----------------------------------------------------------------------------------------------------------------------
# Ray casting


def _per_batch(x: Union[float, torch.Tensor], b: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32, device=device)
    return t.expand(b) if t.dim() == 0 else t.reshape(b)


def _intersect_objects(
    o: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    d: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    sc: dict[str, torch.Tensor],
    with_normals: bool,
) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Ray/object hits. o, d: world components [B, 1, N] (d unit length). Returns t [B, K, N] (inf = miss) and
    world normals (components [B, K, N]) if asked. Each object is tested as all three shapes and the right result
    picked by its shape id, which keeps everything one vectorised pass for scenes of mixed shapes."""
    cx, cy, cz = sc["cx"], sc["cy"], sc["cz"]  # [B, K, 1] centre (cz = half height)
    cs, sn = sc["cos"], sc["sin"]
    # Object-local frame: translate to the centre, rotate by -yaw about z.
    px0, py0, pz = o[0] - cx, o[1] - cy, o[2] - cz
    px, py = cs * px0 + sn * py0, -sn * px0 + cs * py0
    dx, dy, dz = cs * d[0] + sn * d[1], -sn * d[0] + cs * d[1], d[2].expand_as(pz)
    r, hz = sc["r"], sc["hz"]

    # Sphere of radius r.
    b = px * dx + py * dy + pz * dz
    c = px * px + py * py + pz * pz - r * r
    disc = b * b - c
    sq = torch.sqrt(disc.clamp_min(0.0))
    t0, t1 = -b - sq, -b + sq
    t_sph = torch.where(t0 > _EPS, t0, t1)
    t_sph = torch.where((disc > 0) & (t_sph > _EPS), t_sph, _INF)

    # Box with half extents (r, r, hz) via slabs.
    def safe(v: torch.Tensor) -> torch.Tensor:
        return torch.where(v.abs() < 1e-9, torch.full_like(v, 1e-9), v)

    idx, idy, idz = 1.0 / safe(dx), 1.0 / safe(dy), 1.0 / safe(dz)
    ax, bx = (-r - px) * idx, (r - px) * idx
    ay, by = (-r - py) * idy, (r - py) * idy
    az, bz = (-hz - pz) * idz, (hz - pz) * idz
    nx_, ny_, nz_ = torch.minimum(ax, bx), torch.minimum(ay, by), torch.minimum(az, bz)
    tnear = torch.maximum(torch.maximum(nx_, ny_), nz_)
    tfar = torch.minimum(torch.minimum(torch.maximum(ax, bx), torch.maximum(ay, by)), torch.maximum(az, bz))
    t_box = torch.where(tnear > _EPS, tnear, tfar)
    t_box = torch.where((tfar >= tnear) & (t_box > _EPS), t_box, _INF)

    # Capped cylinder, radius r, half height hz, axis z.
    a2 = dx * dx + dy * dy
    bq = px * dx + py * dy
    cq = px * px + py * py - r * r
    disc_c = bq * bq - a2 * cq
    ts = (-bq - torch.sqrt(disc_c.clamp_min(0.0))) / a2.clamp_min(1e-12)
    zs = pz + ts * dz
    side_ok = (disc_c > 0) & (a2 > 1e-12) & (ts > _EPS) & (zs.abs() <= hz)
    t_side = torch.where(side_ok, ts, _INF)
    cap_z = torch.where(dz < 0, hz, -hz)  # the cap facing the ray
    tc = (cap_z - pz) * idz
    xc, yc = px + tc * dx, py + tc * dy
    t_cap = torch.where((tc > _EPS) & (xc * xc + yc * yc <= r * r), tc, _INF)
    t_cyl = torch.minimum(t_side, t_cap)

    shape = sc["shape"]
    t = torch.where(shape == 1, t_sph, torch.where(shape == 2, t_box, torch.where(shape == 3, t_cyl, _INF)))
    if not with_normals:
        return t, None

    tt = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
    hx, hy, hzp = px + tt * dx, py + tt * dy, pz + tt * dz  # local hit point
    # Sphere normal.
    s_n = (hx / r, hy / r, hzp / r)
    # Box normal: the axis whose slab was entered last.
    is_x = (nx_ >= ny_) & (nx_ >= nz_)
    is_y = (~is_x) & (ny_ >= nz_)
    is_z = ~(is_x | is_y)
    b_n = (
        torch.where(is_x, -torch.sign(dx), 0.0),
        torch.where(is_y, -torch.sign(dy), 0.0),
        torch.where(is_z, -torch.sign(dz), 0.0),
    )
    # Cylinder normal: radial on the side, +-z on a cap.
    on_side = t_side <= t_cap
    c_n = (
        torch.where(on_side, hx / r, 0.0),
        torch.where(on_side, hy / r, 0.0),
        torch.where(on_side, 0.0, torch.sign(cap_z)),
    )
    n_loc = [
        torch.where(shape == 1, s, torch.where(shape == 2, bb, cc)) for s, bb, cc in zip(s_n, b_n, c_n, strict=True)
    ]
    # Back to world: rotate by +yaw.
    nxw = cs * n_loc[0] - sn * n_loc[1]
    nyw = sn * n_loc[0] + cs * n_loc[1]
    return t, (nxw, nyw, n_loc[2])


def _hash(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Cheap deterministic pseudo-random value in [0, 1) per integer cell."""
    v = torch.sin(i * 127.1 + j * 311.7) * 43758.5453
    return v - torch.floor(v)


def _floor_albedo(x: torch.Tensor, y: torch.Tensor, floor: torch.Tensor, foot: torch.Tensor) -> torch.Tensor:
    """Procedural floor textures. x, y: floor coordinates [B, N]; floor: [B, 1] type; foot: pixel footprint on the
    floor (world units) used to fade fine detail to its mean colour far away (cheap anti-aliasing)."""
    # Gray checkerboard, 0.5 units per square.
    s = 0.5
    chk = torch.remainder(torch.floor(x / s) + torch.floor(y / s), 2.0)
    fade = (1.0 - foot / (0.5 * s)).clamp(0.0, 1.0)
    gray = 0.52 + (chk - 0.5) * 0.34 * fade
    albedo_chk = gray[..., None].expand(*gray.shape, 3)

    # Pale wooden planks along x: rows 0.22 wide, staggered 1.1 long boards, grain lines and dark seams.
    w, length = 0.22, 1.1
    row = torch.floor(y / w)
    xs = x + _hash(row, row * 0.37) * length
    col = torch.floor(xs / length)
    fv = y / w - row
    fu = xs / length - col
    seam = ((torch.minimum(fv, 1.0 - fv) < 0.05) | (torch.minimum(fu, 1.0 - fu) * length < 0.012)).float()
    grain = 0.5 + 0.5 * torch.sin(2.0 * math.pi * (fv * 3.0 + 0.25 * torch.sin(x * 2.3 + row * 1.7)))
    fade_w = (1.0 - foot / (0.5 * w)).clamp(0.0, 1.0)
    plank = 0.82 + 0.28 * _hash(row, col)
    bright = plank * (1.0 - 0.12 * grain * fade_w) * (1.0 - 0.4 * seam * fade_w)
    wood = torch.tensor([0.62, 0.52, 0.42], device=x.device)  # saturation 0.32 (< object threshold 0.45)
    albedo_wood = bright[..., None] * wood

    # White tiles, 0.4 units, gray grout.
    t = 0.4
    u, v = x / t, y / t
    gu, gv = u - torch.floor(u), v - torch.floor(v)
    grout = (torch.minimum(torch.minimum(gu, 1.0 - gu), torch.minimum(gv, 1.0 - gv)) < 0.04).float()
    fade_t = (1.0 - foot / (0.3 * t)).clamp(0.0, 1.0)
    tile = 0.86 + 0.06 * _hash(torch.floor(u), torch.floor(v))
    lum = tile + (0.45 - tile) * grout * fade_t
    albedo_tile = lum[..., None] * torch.tensor([1.0, 1.0, 0.97], device=x.device)

    f = floor[..., None]
    return torch.where(f == 0, albedo_chk, torch.where(f == 1, albedo_wood, albedo_tile))


def _scene_tensors(scene: SceneBatch) -> dict[str, torch.Tensor]:
    shape = scene.shape
    cyl = shape == 3
    hz = torch.where(cyl, 0.5 * scene.height, scene.size)  # half height
    return {
        "shape": shape[..., None],
        "cx": scene.position[..., 0:1],
        "cy": scene.position[..., 1:2],
        "cz": hz[..., None],
        "r": scene.size[..., None],
        "hz": hz[..., None],
        "cos": torch.cos(scene.yaw)[..., None],
        "sin": torch.sin(scene.yaw)[..., None],
    }


def _trace(
    o: torch.Tensor, d: torch.Tensor, scene: SceneBatch, pix_angle: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shade rays. o, d: [B, N, 3] (d unit). Returns rgb [B, N, 3] and object ids [B, N] (0 = floor / sky)."""
    sc = _scene_tensors(scene)
    ow = tuple(o[..., i][:, None, :] for i in range(3))
    dw = tuple(d[..., i][:, None, :] for i in range(3))
    t_obj, normals = _intersect_objects(ow, dw, sc, with_normals=True)
    assert normals is not None
    t_min, k_min = t_obj.min(dim=1)  # [B, N]
    oz, dz = o[..., 2], d[..., 2]
    t_floor = torch.where(dz < -1e-6, -oz / torch.where(dz < -1e-6, dz, -torch.ones_like(dz)), _INF)
    hit_obj = torch.isfinite(t_min) & (t_min < t_floor)
    hit_floor = (~hit_obj) & torch.isfinite(t_floor)
    t_hit = torch.where(hit_obj, t_min, torch.where(hit_floor, t_floor, torch.zeros_like(t_min)))
    p = o + t_hit[..., None] * d

    gather = k_min[:, None, :]
    n_obj = torch.stack([torch.gather(c, 1, gather)[:, 0] for c in normals], dim=-1)
    up = torch.zeros_like(n_obj)
    up[..., 2] = 1.0
    n = torch.where(hit_obj[..., None], n_obj, up)

    # Cast shadows: does a ray from the surface towards the light hit any object?
    light = scene.light_dir[:, None, :]  # [B, 1, 3]
    ps = p + _SHADOW_BIAS * n
    t_sh, _ = _intersect_objects(
        tuple(ps[..., i][:, None, :] for i in range(3)), tuple(light[..., i][:, None, :] for i in range(3)), sc, False
    )
    lit = (~torch.isfinite(t_sh).any(dim=1)).float()
    ndotl = ((n * light).sum(-1)).clamp_min(0.0) * lit
    shade = _AMBIENT + (1.0 - _AMBIENT) * ndotl

    palette = torch.tensor([PALETTE[c] for c in COLOR_NAMES], device=o.device)
    obj_color = palette[torch.gather(scene.color, 1, k_min)]
    foot = t_hit * pix_angle[:, None] / dz.abs().clamp_min(0.05)
    floor_col = _floor_albedo(
        p[..., 0] + scene.floor_offset[:, None, 0],
        p[..., 1] + scene.floor_offset[:, None, 1],
        scene.floor[:, None],
        foot,
    )
    albedo = torch.where(hit_obj[..., None], obj_color, floor_col)
    surf = albedo * shade[..., None]

    # Sky gradient; distant floor fades into the horizon colour (hides the aliasing of far texture).
    sky_t = dz.clamp(0.0, 1.0).sqrt()[..., None]
    sky = scene.sky_horizon[:, None, :] * (1.0 - sky_t) + scene.sky_top[:, None, :] * sky_t
    fog = ((t_hit - 6.0) / 14.0).clamp(0.0, 1.0)[..., None]
    fog = torch.where(hit_floor[..., None], fog * fog * (3.0 - 2.0 * fog), torch.zeros_like(fog))
    surf = surf * (1.0 - fog) + scene.sky_horizon[:, None, :] * fog
    rgb = torch.where((hit_obj | hit_floor)[..., None], surf, sky)
    ids = torch.where(hit_obj, k_min + 1, torch.zeros_like(k_min))
    return rgb.clamp(0.0, 1.0), ids


def camera_rays(
    c2w: torch.Tensor,
    fx: Union[float, torch.Tensor],
    fy: Union[float, torch.Tensor],
    cx: Union[float, torch.Tensor],
    cy: Union[float, torch.Tensor],
    height: int,
    width: int,
    supersample: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space ray origins and unit directions [B, H*s * W*s, 3] (row-major; s = supersample) for OpenGL
    camera-to-world poses [B, 3, 4]. With s = 1 the rays go through pixel centres (x + 0.5, y + 0.5), as nerfstudio's
    Cameras.generate_rays does; with s > 1 through the centres of an s x s grid of sub-pixels."""
    device = c2w.device
    b = c2w.shape[0]
    c2w = c2w[..., :3, :4].float()
    fx_t, fy_t = _per_batch(fx, b, device), _per_batch(fy, b, device)
    cx_t, cy_t = _per_batch(cx, b, device), _per_batch(cy, b, device)
    ss = int(supersample)
    sub = (torch.arange(ss, device=device, dtype=torch.float32) + 0.5) / ss
    v = (torch.arange(height, device=device, dtype=torch.float32)[:, None] + sub[None, :]).reshape(-1)
    u = (torch.arange(width, device=device, dtype=torch.float32)[:, None] + sub[None, :]).reshape(-1)
    vv, uu = torch.meshgrid(v, u, indexing="ij")  # [H*s, W*s]
    uu, vv = uu.reshape(1, -1), vv.reshape(1, -1)
    xcam = (uu - cx_t[:, None]) / fx_t[:, None]
    ycam = -(vv - cy_t[:, None]) / fy_t[:, None]  # image rows go down, camera y goes up
    dcam = torch.stack([xcam, ycam, -torch.ones_like(xcam)], dim=-1)  # camera looks down -z
    d = torch.nn.functional.normalize(torch.einsum("nij,nrj->nri", c2w[:, :, :3], dcam), dim=-1)
    o = c2w[:, None, :, 3].expand_as(d)
    return o, d


def render(
    scene: Union[SceneSpec, Sequence[SceneSpec], SceneBatch],
    c2w: torch.Tensor,
    fx: Union[float, torch.Tensor],
    fy: Union[float, torch.Tensor],
    cx: Union[float, torch.Tensor],
    cy: Union[float, torch.Tensor],
    height: int,
    width: int,
    device: Union[str, torch.device, None] = None,
    supersample: int = 2,
    max_rays_per_chunk: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray cast B views. Returns rgb [B, H, W, 3] float in [0, 1] and object ids [B, H, W] long (0 = floor/sky,
    k = k-th object of the scene).

    Args:
        scene: one spec (shared by all views), B specs, or a SceneBatch of B scenes (or of 1, broadcast).
        c2w: [B, 3, 4] (or [B, 4, 4]) camera-to-world, OpenGL convention.
        fx, fy, cx, cy: intrinsics in pixels (floats or [B] tensors); pixel centres sit at +0.5 like nerfstudio's.
        height, width: image size.
        device: where to compute (default: c2w's device).
        supersample: s x s samples per pixel, averaged (anti-aliasing); the id map takes the majority label.
        max_rays_per_chunk: views are processed in groups to bound memory.
    """
    device = torch.device(device) if device is not None else c2w.device
    c2w = c2w[..., :3, :4].to(device=device, dtype=torch.float32)
    b = c2w.shape[0]
    if isinstance(scene, SceneSpec):
        batch = SceneBatch.from_specs([scene], device)
    elif isinstance(scene, SceneBatch):
        batch = scene.to(device)
    else:
        batch = SceneBatch.from_specs(list(scene), device)
    if batch.batch_size == 1 and b > 1:
        batch = batch.index(torch.zeros(b, dtype=torch.long))
    if batch.batch_size != b:
        raise ValueError(f"{batch.batch_size} scenes for {b} cameras")
    fx_t, fy_t = _per_batch(fx, b, device), _per_batch(fy, b, device)
    cx_t, cy_t = _per_batch(cx, b, device), _per_batch(cy, b, device)

    ss = int(supersample)
    per_chunk = max(1, max_rays_per_chunk // (height * width * ss * ss))
    rgbs, idss = [], []
    for s in range(0, b, per_chunk):
        e = min(b, s + per_chunk)
        sl = slice(s, e)
        o, d = camera_rays(c2w[sl], fx_t[sl], fy_t[sl], cx_t[sl], cy_t[sl], height, width, ss)
        pix_angle = 1.0 / (fx_t[sl] * ss)
        rgb, ids = _trace(o, d, batch.index(torch.arange(s, e)), pix_angle)
        n = e - s
        rgb = rgb.reshape(n, height, ss, width, ss, 3).mean(dim=(2, 4))
        k = int(batch.shape.shape[1])
        onehot = torch.nn.functional.one_hot(ids.reshape(n, height, ss, width, ss), k + 1).sum(dim=(2, 4))
        # Majority label; ties go to the lower id (background) so masks never grow past the silhouette.
        idss.append(onehot.argmax(dim=-1))
        rgbs.append(rgb)
    return torch.cat(rgbs, 0), torch.cat(idss, 0)


# ----------------------------------------------------------------------------------------------------------------------
# nerfstudio dataset


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, format="PNG", optimize=False, compress_level=6)


def write_nerfstudio_dataset(
    spec: SceneSpec,
    out_dir: Union[str, Path],
    num_views: int = 48,
    resolution: int = 128,
    seed: int = 0,
    radius: float = 3.2,
    elevation_range: tuple[float, float] = (12.0, 50.0),
    fov_deg: float = 50.0,
    supersample: int = 3,
    write_split: bool = False,
    eval_every: int = 8,
) -> Path:
    """Render `num_views` orbit views of `spec` and write a nerfstudio dataset folder.

    Writes transforms.json (OPENCV pinhole, no distortion; 4x4 OpenGL camera-to-world per frame), images/ and masks/
    (PNG, 255 where any object is) and scene.json (the spec, its caption and the render settings). Byte-identical for
    the same arguments. With `write_split`, every `eval_every`-th frame is listed in "val_filenames" and the rest in
    "train_filenames" (nerfstudio then ignores its own eval_mode); by default nerfstudio's eval_mode decides.
    Returns the folder.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    c2w = orbit_cameras(num_views, radius, elevation_range, spec.center(), seed)
    f = focal_from_fov(resolution, fov_deg)
    c = resolution / 2.0
    rgb, ids = render(spec, c2w, f, f, c, c, resolution, resolution, device="cpu", supersample=supersample)
    imgs = (rgb * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    masks = ((ids > 0).to(torch.uint8) * 255).numpy()
    frames = []
    for i in range(num_views):
        name = f"frame_{i + 1:05d}.png"
        _png(out / "images" / name, imgs[i])
        _png(out / "masks" / name, masks[i])
        mat = torch.cat([c2w[i], torch.tensor([[0.0, 0.0, 0.0, 1.0]])], dim=0)
        frames.append(
            {
                "file_path": f"images/{name}",
                "mask_path": f"masks/{name}",
                "transform_matrix": [[round(float(v), 8) for v in row] for row in mat],
            }
        )
    meta: dict = {
        "camera_model": "OPENCV",
        "fl_x": f,
        "fl_y": f,
        "cx": c,
        "cy": c,
        "w": resolution,
        "h": resolution,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "frames": frames,
    }
    if write_split:
        names = [fr["file_path"] for fr in frames]
        meta["val_filenames"] = [n for i, n in enumerate(names) if i % eval_every == 0]
        # nerfstudio's "test" split (ns-eval, ns-render dataset) reads test_filenames: the same held-out views
        meta["test_filenames"] = meta["val_filenames"]
        meta["train_filenames"] = [n for i, n in enumerate(names) if i % eval_every != 0]
    (out / "transforms.json").write_text(json.dumps(meta, indent=2) + "\n")
    scene_meta = {
        "caption": caption(spec),
        "spec": spec.to_dict(),
        "render": {
            "num_views": num_views,
            "resolution": resolution,
            "seed": seed,
            "radius": radius,
            "elevation_range": list(elevation_range),
            "fov_deg": fov_deg,
            "supersample": supersample,
        },
    }
    (out / "scene.json").write_text(json.dumps(scene_meta, indent=2) + "\n")
    return out


def load_scene_json(path: Union[str, Path]) -> SceneSpec:
    """Read the SceneSpec back from a dataset's scene.json (or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "scene.json"
    return SceneSpec.from_dict(json.loads(p.read_text())["spec"])
