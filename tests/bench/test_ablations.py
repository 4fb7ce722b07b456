"""`ednerf-bench ablations --quick`: the whole benchmark end to end on one scene, and its input checks.

The quick run is far too short to say anything about the claims (docs/results.md has the full run); this checks
that every number of every claim is produced and written, and the pictures exist.
"""

from __future__ import annotations

import json

import pytest
import tyro

from ednerf_ns.bench.ablations import EDITS, AblationConfig, main, parse_pairs
from ednerf_ns.errors import UserError


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablations")
    return out, main(AblationConfig(output_dir=out, quick=True, device="cpu"))


def test_quick_ablation_writes_every_number(quick):
    out, report = quick
    assert json.loads((out / "ablations.json").read_text()) == report
    assert len(report["scenes"]) == 1 and report["settings"]["quick"]
    scene = report["scenes"][0]
    for variant in ("on", "off", "on_without_refinement_layer"):
        for key in ("latent_psnr", "rgb_psnr", "rgb_ssim"):
            assert isinstance(scene["refinement"][variant][key], float), (variant, key)
    assert set(scene["edits"]) == {"source", *EDITS}
    for name in EDITS:
        numbers = scene["edits"][name]
        keys = ("background_psnr", "background_ssim", "target_color_score", "target_scene_psnr")
        for key in (*keys, "source_color_score", "target_scene_psnr_object"):
            assert isinstance(numbers[key], float), (name, key)
        assert "consistency_psnr" in numbers
    for claim in ("1_refinement_on_minus_off", "2_dds_minus_sds", "3_mask_minus_no_mask"):
        assert report["claims"][claim], claim
        for difference in report["claims"][claim].values():
            assert len(difference["per_scene"]) == 1 and "mean" in difference
    assert report["mean"]["edits"]["dds_mask"]["background_psnr"] == scene["edits"]["dds_mask"]["background_psnr"]
    assert (out / "scene_0" / "contact_sheet.png").is_file()
    assert "### 1. Refinement layer" in (out / "ablations.md").read_text()
    assert report["machine"]["cpu_count"] and report["wall_time_s"] > 0


def test_scene_pairs_are_checked():
    assert parse_pairs(("a red sphere on a wooden floor -> a blue sphere on a wooden floor",)) == [
        ("a red sphere on a wooden floor", "a blue sphere on a wooden floor")
    ]
    with pytest.raises(UserError, match="source prompt -> target prompt"):
        parse_pairs(("a red sphere on a wooden floor",))
    with pytest.raises(UserError, match="another palette colour"):
        parse_pairs(("a red sphere -> a red sphere on a wooden floor",))
    with pytest.raises(UserError, match="must describe a demo scene"):
        parse_pairs(("a cat -> a blue cat",))


def test_cli_parses_the_options():
    config = tyro.cli(AblationConfig, args=["--quick", "--scenes", "a red cube -> a green cube", "--edit-steps", "5"])
    assert config.quick and config.scenes == ("a red cube -> a green cube",) and config.edit_steps == 5
