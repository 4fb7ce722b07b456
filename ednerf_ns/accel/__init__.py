"""Optional accelerations, each with an eager fallback that the tests compare it against: the vectorised and Triton
hash-grid kernels, and CUDA-graph replay of whole training steps and of UNet calls.

May import: torch, triton (lazily), nerfstudio's field components (the hash grid it accelerates), ednerf_ns.errors
and ednerf_ns.ops. Never diffusers or transformers.
"""
