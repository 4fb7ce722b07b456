"""The vectorised torch hash grid computes exactly nerfstudio's encoding, with the same parameters."""

from __future__ import annotations

import copy

import torch
from nerfstudio.field_components.encodings import HashEncoding

from ednerf_ns.hashgrid import FastHashEncoding, accelerate_hash_grids


def test_fast_hash_grid_matches_nerfstudio_forward_and_backward():
    torch.manual_seed(0)
    reference = HashEncoding(num_levels=6, min_res=4, max_res=128, log2_hashmap_size=12, implementation="torch")
    with torch.no_grad():
        reference.hash_table.normal_()  # large values: differences would show
    fast = copy.deepcopy(reference)
    assert accelerate_hash_grids(fast) == 1 and isinstance(fast, FastHashEncoding)
    x = torch.rand(3000, 3)
    x[:10] = torch.tensor([0.5, 0.25, 0.0])  # on grid vertices: ceil == floor
    out_ref, out_fast = reference(x), fast(x)
    assert out_fast.shape == out_ref.shape == (3000, 12)
    assert torch.allclose(out_fast, out_ref, atol=1e-5)
    upstream = torch.randn_like(out_ref)
    (grad_ref,) = torch.autograd.grad(out_ref, reference.hash_table, upstream)
    (grad_fast,) = torch.autograd.grad(out_fast, fast.hash_table, upstream)
    assert torch.allclose(grad_fast, grad_ref, atol=1e-4)
    assert list(fast.state_dict()) == list(reference.state_dict()) == ["hash_table"]


def test_batch_shapes_are_kept():
    fast = HashEncoding(num_levels=2, min_res=4, max_res=8, log2_hashmap_size=8, implementation="torch")
    accelerate_hash_grids(fast)
    assert fast(torch.rand(5, 7, 3)).shape == (5, 7, 4)
