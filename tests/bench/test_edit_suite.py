"""`ednerf-bench edits`: the suite's coverage, its options, the pass rule, geometry scoring, and one real pair."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ednerf_ns.bench import edits
from ednerf_ns.demo.cli import parse_scene_prompt
from ednerf_ns.demo.scene import FLOORS, SHAPES
from ednerf_ns.errors import UserError


def spec(prompt: str):
    s = parse_scene_prompt(prompt)
    return s.objects[0], s.floor


def test_suite_covers_every_shape_and_floor_in_each_half_and_the_hue_wheel():
    recolour = [p for p in edits.SUITE if p.kind == "recolour"]
    assert len(recolour) >= 24
    for half in ("tune", "held_out"):
        pairs = [p for p in recolour if p.half == half]
        assert {(spec(p.source)[0].shape, spec(p.source)[1]) for p in pairs} == {(s, f) for s in SHAPES for f in FLOORS}
    changes = {(spec(p.source)[0].color, spec(p.target)[0].color) for p in recolour}
    for needed in (("blue", "red"), ("red", "blue"), ("purple", "orange"), ("yellow", "blue")):
        assert needed in changes
    assert {spec(p.target)[0].color for p in recolour} == {"red", "orange", "yellow", "green", "blue", "purple"}
    assert len({p.seed for p in recolour}) >= 3
    assert any(p.kind == "shape" for p in edits.SUITE)
    assert len({p.name for p in edits.SUITE}) == len(edits.SUITE)
    for p in edits.SUITE:  # one word changed, articles right ("an orange cube")
        assert p.target.split()[0] == ("an" if p.target.split()[1][0] in "aeiou" else "a")
        assert sum(a != b for a, b in zip(p.source.split()[1:], p.target.split()[1:], strict=True)) == 1


def test_pairs_and_variants_options():
    pairs = edits.parse_pairs(("a red cube on a wooden floor -> a blue cube on a wooden floor @2",))
    assert pairs[0].seed == 2 and pairs[0].kind == "recolour"
    with pytest.raises(UserError, match="must be 'source prompt -> target prompt'"):
        edits.parse_pairs(("a red cube",))
    with pytest.raises(UserError, match="seed after '@'"):
        edits.parse_pairs(("a red cube on a wooden floor -> a blue cube on a wooden floor @x",))
    variants = edits.parse_variants(
        ("default", "lr:optimizers.fields.optimizer.lr=3e-3,pipeline.model.guidance_scale=9")
    )
    assert variants["lr"] == {"optimizers.fields.optimizer.lr": 3e-3, "pipeline.model.guidance_scale": 9}
    with pytest.raises(UserError, match="unknown"):
        edits.parse_variants(("nonsense",))


def test_every_named_variant_applies_to_the_edit_config():
    from ednerf_ns.configs import ed_nerf_edit_trainer
    from ednerf_ns.tools.runs import apply_overrides

    for name, overrides in edits.VARIANTS.items():
        config = ed_nerf_edit_trainer()
        apply_overrides(config, overrides)  # refuses an unknown path
        for path, value in overrides.items():
            target = config
            for part in path.split("."):
                target = target[part] if isinstance(target, dict) else getattr(target, part)
            assert target == value, (name, path)
    with pytest.raises(UserError, match="no 'guidance_scal'"):
        apply_overrides(ed_nerf_edit_trainer(), {"pipeline.model.guidance_scal": 1})


def test_pass_rule():
    good = {"target_color_score": 0.9, "object_psnr_gain": 4.0, "shape_iou": 0.8, "background_psnr": 30.0}
    assert edits.passes(good, "recolour")
    for key in good:
        assert not edits.passes({**good, key: edits.PASS_RULE[key] - 0.01}, "recolour"), key
    assert not edits.passes({**good, "shape_iou": None}, "recolour")
    assert edits.passes(good, "shape") is None


def test_object_region_is_what_stands_in_front_of_the_floor():
    """A camera 3 units above the floor looking straight down: the floor is 3 units away everywhere; where the
    rendered depth is 2 (something 1 unit tall) the region is the object, and nothing where depth is the floor's."""
    from nerfstudio.cameras.cameras import Cameras

    c2w = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 3.0]]])  # looks down -z
    camera = Cameras(camera_to_worlds=c2w, fx=20.0, fy=20.0, cx=8.0, cy=8.0, width=16, height=16)
    rays = camera.generate_rays(camera_indices=0, keep_shape=True)
    floor_distance = 3.0 / -rays.directions[..., 2]
    depth = floor_distance.clone()
    depth[4:12, 4:12] = 2.0 / -rays.directions[4:12, 4:12, 2]
    view = type("View", (), {"camera": camera})()
    floor = (torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]), 1.0)
    region = edits.object_region(view, floor, depth)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:12, 4:12] = True
    assert torch.equal(region, expected)
    assert edits._iou(region, expected) == 1.0


def test_one_pair_end_to_end(tmp_path, monkeypatch, tiny_sd):
    """A real (tiny) pair: train, edit with two variants, the 2D reference, measure, summarise; a second call
    reuses everything. Tiny random weights: this checks the plumbing, not the numbers."""
    out = tmp_path / "suite"
    args = [
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--limit",
        "1",
        "--train-steps",
        "20",
        "--edit-steps",
        "3",
        "--views",
        "9",
        "--resolution",
        "64",
        "--diffusion-model",
        str(tiny_sd),
        "--variants",
        "default",
        "grid_only",
    ]
    monkeypatch.setattr(sys, "argv", ["ednerf-bench", "edits", *args])
    from ednerf_ns.bench.cli import entrypoint

    entrypoint()
    report = json.loads((out / "suite.json").read_text())
    (pair,) = report["pairs"]
    assert set(pair["edits"]) == {"default", "grid_only"}
    for numbers in (*pair["edits"].values(), pair["reference_2d"]):
        assert numbers["target_color_score"] is not None and numbers["background_psnr"] is not None
    assert pair["edits"]["default"]["shape_iou"] is not None
    assert Path(pair["contact_sheet"]).is_file()
    assert report["summary"]["tune"]["default"]["pairs"] == 1
    stamp = (out / pair["name"] / "result.json").stat().st_mtime_ns
    entrypoint()  # everything measured already: nothing is rerun
    assert (out / pair["name"] / "result.json").stat().st_mtime_ns == stamp
