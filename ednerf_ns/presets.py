"""Size presets for the method configs.

The registered defaults suit real captures at Stable Diffusion's 512 px (64 x 64 latents) on a GPU. Small
scenes - the procedural demo scenes at 128 px are 16 x 16 latents - need far less capacity, and on a CPU every
hash-grid level and every sample per ray costs time, so the demo and the tests use this lighter preset.
"""

from __future__ import annotations

from nerfstudio.engine.trainer import TrainerConfig


def apply_small_scene_preset(config: TrainerConfig) -> TrainerConfig:
    """Fewer hash-grid levels and samples per ray, a narrower refinement layer (in place; returns `config`)."""
    model = config.pipeline.model
    model.num_levels = 8
    model.max_res = 256
    model.log2_hashmap_size = 15
    model.hidden_dim = 32
    model.hidden_dim_color = 32
    model.num_proposal_samples_per_ray = (64, 32)
    model.num_nerf_samples_per_ray = 24
    model.proposal_net_args_list = [
        {"hidden_dim": 16, "log2_hashmap_size": 14, "num_levels": 5, "max_res": 64, "use_linear": False},
        {"hidden_dim": 16, "log2_hashmap_size": 14, "num_levels": 5, "max_res": 128, "use_linear": False},
    ]
    # short runs: finish annealing the proposal weights early, so training ends with the sampling that
    # evaluation and editing use (fully annealed)
    model.proposal_weights_anneal_max_num_iters = 200
    model.refinement_width = 32
    model.refinement_heads = 2
    return config
