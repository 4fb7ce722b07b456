"""The 2D models: Stable Diffusion (VAE, UNet, text encoder) and CLIPSeg, loaded lazily and kept out of the torch
module tree (so never in a checkpoint).

May import: diffusers, transformers, safetensors (lazily where they are heavy), ednerf_ns.errors, ednerf_ns.ops and
ednerf_ns.accel. Never nerfstudio.
"""
