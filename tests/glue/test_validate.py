"""The pieces behind the one-line refusals: image modes, option ranges, the step counters, atomic saves, and the
top-level handler (the commands themselves are exercised in test_errors.py)."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_scene, train_config
from PIL import Image

from ednerf_ns.errors import ArgumentError, UserError, one_line_errors
from ednerf_ns.validate import check_dataset, check_edit_options, check_range, read_image


def test_image_modes_are_converted_or_refused_by_name(tmp_path):
    rgb = (np.random.default_rng(0).random((16, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == (16, 24, 3) and (gray[..., 0] == gray[..., 2]).all()
    palette = Image.fromarray(rgb).quantize(colors=8)
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_image(tmp_path / "palette.png"), np.asarray(palette.convert("RGB")))
    palette.save(tmp_path / "palette_alpha.png", transparency=0)
    assert read_image(tmp_path / "palette_alpha.png").shape == (16, 24, 4)
    sixteen = (np.arange(16 * 24).reshape(16, 24) * 170).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "gray16.png")
    converted = read_image(tmp_path / "gray16.png")
    assert converted.shape == (16, 24, 3)
    assert np.abs(converted[..., 0].astype(int) - np.round(sixteen / 65535 * 255)).max() <= 1
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - rgb).mean() < 8
    Image.fromarray(rgb).convert("LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").shape == (16, 24, 4)
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(UserError, match="float.tif' has pixel mode F"):
        read_image(tmp_path / "float.tif")


def test_a_dataset_of_unusual_image_modes_trains(tmp_path, tiny_sd):
    data = make_scene(tmp_path / "scene", views=6)
    images = sorted((data / "images").glob("*.png"))
    Image.open(images[0]).convert("L").save(images[0])
    Image.open(images[1]).quantize(colors=64).save(images[1])
    Image.open(images[2]).convert("LA").save(images[2])
    gray16 = np.asarray(Image.open(images[3]).convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray16).save(images[3])
    config = train_config(data, tiny_sd, tmp_path / "out", tmp_path / "cache", steps=1)
    check_dataset(config.pipeline.datamanager)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    views = {v["image_idx"]: v for v in pipeline.datamanager.cached_train}
    names = [p.name for p in pipeline.datamanager.train_dataset.image_filenames]
    for name in (images[0].name, images[3].name):
        if name in names:
            image = views[names.index(name)]["image"]
            assert torch.equal(image[..., 0], image[..., 1]) and torch.equal(image[..., 1], image[..., 2])


def test_dataset_checks_name_the_file(tmp_path, scene):
    data = tmp_path / "scene"
    shutil.copytree(scene, data)
    config = train_config(data, "unused", tmp_path, tmp_path, steps=1).pipeline.datamanager
    meta = json.loads((data / "transforms.json").read_text())
    meta["frames"][2]["fl_x"] = -1
    (data / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match='frame 2 of .* has "fl_x": -1, which is not a positive number'):
        check_dataset(config)
    (data / "transforms.json").write_text(json.dumps([1, 2]))
    with pytest.raises(UserError, match='has no "frames" list'):
        check_dataset(config)


def test_option_ranges():
    from ednerf_ns.edit_model import EdNerfEditModelConfig

    check_range(0.5, "--x", low=0, high=1)
    for value in (float("nan"), float("inf"), -0.1, 1.1):
        with pytest.raises(ArgumentError, match=r"--x .* is outside \[0, 1\]"):
            check_range(value, "--x", low=0, high=1)
    model = EdNerfEditModelConfig(prompt="a blue sphere", t_min=0.5, t_max=0.5)
    with pytest.raises(ArgumentError, match="t-min 0.5 is not below"):
        check_edit_options(model)
    model.t_min, model.guidance_scale = 0.1, float("nan")
    with pytest.raises(ArgumentError, match="guidance-scale nan"):
        check_edit_options(model)
    model.guidance_scale = 0.0  # no guidance at all is allowed (unconditional scores)
    check_edit_options(model)


def test_atomic_save_never_leaves_a_partial_checkpoint(tmp_path, monkeypatch):
    from ednerf_ns.checkpoint import save_atomic

    models = tmp_path / "run" / "nerfstudio_models"
    earlier = models / "step-000000001.ckpt"
    save_atomic({"pipeline": {"w": torch.ones(3)}}, earlier)
    before = earlier.read_bytes()

    def full_disk(obj, file):
        file.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        save_atomic({"pipeline": {}}, models / "step-000000002.ckpt")
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["nerfstudio_models", "step-000000001.ckpt"]
    assert earlier.read_bytes() == before


def test_top_level_handler(capsys, monkeypatch):
    with pytest.raises(ArgumentError) as info, one_line_errors():
        raise ArgumentError("--x 3 is wrong; pass 2")
    assert info.value.code == 2
    with pytest.raises(UserError) as info, one_line_errors():
        raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/file")
    assert info.value.code == 1 and "free some disk space" in str(info.value)
    with pytest.raises(UserError) as info, one_line_errors():
        raise ValueError("something nobody checked\nsecond line")
    assert "unexpected ValueError: something nobody checked; please report it" in str(info.value)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(": error: " in line for line in err)
    monkeypatch.setenv("EDNERF_TRACEBACK", "1")
    with pytest.raises(ValueError), one_line_errors():
        raise ValueError("shown with its traceback")
