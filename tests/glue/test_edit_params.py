"""What an edit trains and keeps: parameters chosen by module (torch and tiny-cuda-nn layouts), frozen geometry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ednerf_ns.edit_model import field_parameter_parts, select_edit_parameters
from ednerf_ns.errors import UserError


class FusedNetwork(nn.Module):
    """The shape of a tiny-cuda-nn module: one flat `params` tensor (grid and MLP fused)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.params = nn.Parameter(torch.zeros(size))


def tcnn_shaped_field() -> nn.Module:
    """A module tree with nerfstudio's tcnn field names: `mlp_base.model.params` (hash grid + density MLP fused,
    a tcnn.NetworkWithInputEncoding), `mlp_head.tcnn_encoding.params` (the colour MLP), an appearance embedding."""
    field = nn.Module()
    field.mlp_base = nn.Module()
    field.mlp_base.model = FusedNetwork(1000)
    field.mlp_head = nn.Module()
    field.mlp_head.tcnn_encoding = FusedNetwork(50)
    field.embedding_appearance = nn.Embedding(4, 2)
    return field


def test_tcnn_field_parameters_are_chosen_by_module():
    field = tcnn_shaped_field()
    names = {id(p): n for n, p in field.named_parameters()}
    assert set(names.values()) == {
        "mlp_base.model.params",
        "mlp_head.tcnn_encoding.params",
        "embedding_appearance.weight",
    }
    parts = field_parameter_parts(field)
    assert [names[id(p)] for p in parts["grid"]] == ["mlp_base.model.params"]  # fused: grid + density MLP
    assert parts["density"] == []
    assert [names[id(p)] for p in parts["color"]] == ["mlp_head.tcnn_encoding.params"]
    assert [names[id(p)] for p in parts["other"]] == ["embedding_appearance.weight"]
    for which, expected in (("grid", 0), ("grid_and_color", 1), ("all", 1)):
        grid, mlps = select_edit_parameters(field, which)
        assert len(grid) == 1 and len(mlps) == expected  # never an empty group: Adam would refuse it


def small_field():
    """nerfstudio's torch field layout (LatentField), small."""
    from nerfstudio.data.scene_box import SceneBox

    from ednerf_ns.field import LatentField

    aabb = SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])).aabb
    options = dict(num_levels=4, log2_hashmap_size=8, hidden_dim=16, hidden_dim_color=16)
    return LatentField(aabb, num_images=2, implementation="torch", **options)


def test_torch_field_parameters_are_chosen_by_module():
    field = small_field()
    names = {id(p): n for n, p in field.named_parameters()}
    parts = field_parameter_parts(field)
    assert [names[id(p)] for p in parts["grid"]] == ["mlp_base.model.0.hash_table"]
    assert parts["density"] and all(names[id(p)].startswith("mlp_base.model.1.") for p in parts["density"])
    assert parts["color"] and all(names[id(p)].startswith("mlp_head.") for p in parts["color"])


def test_a_field_without_a_grid_is_refused_in_one_line():
    field = nn.Module()
    field.mlp_base = nn.Module()
    field.mlp_head = nn.Linear(2, 2)
    with pytest.raises(UserError, match="no hash-grid parameters"):
        select_edit_parameters(field, "grid")


def test_frozen_geometry_loads_states_without_its_copy():
    """A source run (or an edit saved before geometry could be frozen) has no `density_base`: it is filled from the
    state's own `mlp_base`, through nerfstudio's loading path (load_state_dict) and through load_verified."""
    from ednerf_ns.checkpoint import load_verified

    torch.manual_seed(0)
    source = small_field()
    state = source.state_dict()
    for load in (lambda m, s: m.load_state_dict(s, strict=True), lambda m, s: load_verified(m, s, "state")):
        frozen = small_field()
        frozen.freeze_geometry()
        load(frozen, dict(state))
        for name, value in source.mlp_base.state_dict().items():
            assert torch.equal(frozen.density_base.state_dict()[name], value)
        assert not any(p.requires_grad for p in frozen.density_base.parameters())
