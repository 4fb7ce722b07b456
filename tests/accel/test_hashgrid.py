"""The vectorised torch hash grid computes exactly nerfstudio's encoding, with the same parameters."""

from __future__ import annotations

import copy

import torch
from nerfstudio.field_components.encodings import HashEncoding

from ednerf_ns.accel.hashgrid import FastHashEncoding, accelerate_hash_grids


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


# The Triton kernels run on the CPU through Triton's interpreter, which must be switched on before triton compiles
# anything: in a fresh interpreter process.
TRITON_CHECK = r"""
import torch
from nerfstudio.field_components.encodings import HashEncoding
from ednerf_ns.accel.hashgrid import accelerate_hash_grids
from ednerf_ns.accel.hashgrid_triton import hash_grid_encode

torch.manual_seed(0)
for levels, size_log2, max_res in ((6, 12, 128), (16, 19, 2048)):
    enc = HashEncoding(num_levels=levels, min_res=16, max_res=max_res, log2_hashmap_size=size_log2,
                       implementation="torch")
    accelerate_hash_grids(enc, triton=False)
    with torch.no_grad():
        enc.hash_table.normal_()
    x = torch.rand(700, 3)
    x[:10] = torch.tensor([0.5, 0.25, 0.0])  # on grid vertices: ceil == floor
    x[10:20] = 0.0  # outside the scene box, samples read the origin
    # samples along rays: consecutive rows close together, most of them in one cell at coarse levels (the
    # backward merges those); 700 rows is not a multiple of the rows per program
    origins, directions = torch.rand(7, 1, 3) * 0.5, torch.randn(7, 1, 3) * 0.02
    x[350:] = (origins + directions * torch.linspace(0, 1, 50)[None, :, None]).reshape(-1, 3)
    scalings = enc.scalings.float()
    out = hash_grid_encode(x.view(7, 100, 3), enc.hash_table, scalings, enc.hash_table_size)
    ref = enc(x).view(7, 100, -1)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 1e-6, f"forward relative error {err}"
    upstream = torch.randn_like(ref)
    (g_out,) = torch.autograd.grad(out, enc.hash_table, upstream)
    (g_ref,) = torch.autograd.grad(ref, enc.hash_table, upstream)
    err = ((g_out - g_ref).norm() / g_ref.norm()).item()
    assert err < 1e-5, f"table gradient relative error {err}"
    assert (g_out != 0).sum() == (g_ref != 0).sum()
print("ok")
"""


def test_triton_kernels_compute_the_same_encoding_and_table_gradient():
    import os
    import subprocess
    import sys

    pytest = __import__("pytest")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
