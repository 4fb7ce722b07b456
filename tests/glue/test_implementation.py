"""Which hash-grid implementation a run builds (`--pipeline.model.implementation`)."""

from __future__ import annotations

import pytest

from ednerf_ns.errors import UserError
from ednerf_ns.field import resolve_implementation


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_auto_is_the_tested_torch_path_even_with_tcnn_installed(monkeypatch, device):
    import nerfstudio.utils.external as external

    monkeypatch.setattr(external, "TCNN_EXISTS", True)  # as on an install with tiny-cuda-nn
    assert resolve_implementation("auto", device) == "torch"
    assert resolve_implementation("tcnn", device) == "tcnn"
    assert resolve_implementation("torch", device) == "torch"


def test_tcnn_only_when_asked_warns_and_is_recorded(tmp_path, scene, tiny_sd, cache_dir, capsys, monkeypatch):
    import nerfstudio.utils.external as external
    from conftest import train_config

    config = train_config(scene, tiny_sd, tmp_path, cache_dir, steps=1, implementation="tcnn")
    if not external.TCNN_EXISTS:  # this machine: refused in one line, naming the way out
        with pytest.raises(UserError, match="tinycudann is not importable.*implementation torch"):
            config.pipeline.model.setup(scene_box=_box(), num_train_data=1, device="cpu")
        monkeypatch.setattr(external, "TCNN_EXISTS", True)
        # nerfstudio's own modules fall back to torch without tcnn: the warning and the record are what we test
    model = config.pipeline.model.setup(scene_box=_box(), num_train_data=1, device="cpu")
    assert model.config.implementation == "tcnn"
    assert "not verified" in capsys.readouterr().out
    config = train_config(scene, tiny_sd, tmp_path, cache_dir, steps=1)
    model = config.pipeline.model.setup(scene_box=_box(), num_train_data=1, device="cpu")
    assert model.config.implementation == "torch"  # what config.yml records


def _box():
    import torch
    from nerfstudio.data.scene_box import SceneBox

    return SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
