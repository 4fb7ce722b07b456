"""Which settings let a whole ed-nerf training step be captured in a CUDA graph (diagnostics for step_graph).

    python benchmarks/capture_probe.py [VARIANT ...]   # each variant (default: all) in its own process

A failed capture can leave the process's CUDA state damaged, so every variant runs in a fresh interpreter. Each
trains `ed-nerf` with the embedded tiny model on a small procedural scene for a few steps with the step graph on,
and reports whether the capture worked, the error if not, whether random numbers still work afterwards, and
the replayed steps' losses next to an eager run's (same seed).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

VARIANTS = {
    "thread_local": {"mode": "thread_local", "triton": True},
    "global": {"mode": "global", "triton": True},
    "thread_local_no_triton": {"mode": "thread_local", "triton": False},
    "global_no_triton": {"mode": "global", "triton": False},
}


def recovery() -> dict:
    """A step that reads a value on the host cannot be captured: the runner must fall back to eager steps, and
    random numbers must still work afterwards (torch leaves its generator broken after a failed capture)."""
    import torch

    from ednerf_ns.accel.step_graph import StepGraphRunner

    weight = torch.nn.Parameter(torch.ones(3, device="cuda"))
    runner = StepGraphRunner()
    values = []
    with runner.stream_scope():
        for i in range(4):

            def fn(inputs):
                loss = (inputs["x"] * weight + torch.rand(3, device="cuda")).sum()
                loss.backward()
                return float(loss)  # a host read: cannot be captured

            values.append(runner.run("key", {"x": torch.full((3,), float(i), device="cuda")}, fn, [weight]))
    torch.rand(1, device="cuda")
    return {"variant": "recovery", "values": values, "stats": runner.stats.__dict__}


def probe(name: str) -> dict:
    import torch

    if name == "recovery":
        return recovery()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_scene, train_config
    from test_step_graph import setup_trainer

    import ednerf_ns.demo
    from ednerf_ns.accel.step_graph import StepGraphRunner, cuda_capture

    variant = VARIANTS[name]
    out: dict = {"variant": name, **variant}
    tmp = Path(tempfile.mkdtemp())
    scene = make_scene(tmp / "scene", views=8, resolution=128)
    model = Path(ednerf_ns.demo.__file__).parent / "weights"
    losses = {}
    for graph in (False, True):
        config = train_config(scene, model, tmp / f"runs{graph}", tmp / "cache", steps=8)
        config.machine.device_type = "cuda"
        config.pipeline.model.proposal_weights_anneal_max_num_iters = 1
        config.pipeline.model.triton_hash_grid = variant["triton"]
        trainer, step = setup_trainer(config, graph=False)
        if graph:
            capture = functools.partial(cuda_capture, mode=variant["mode"])
            trainer.step_graph = StepGraphRunner(capture=capture)
        values = []
        try:
            for i in range(8):
                loss, _, _ = step(i)
                values.append(float(loss))
        except BaseException as exc:
            out[f"error_{'graph' if graph else 'eager'}"] = f"{type(exc).__name__}: {exc}"[:1500]
            traceback.print_exc()
        losses["graph" if graph else "eager"] = values
        if graph:
            out["stats"] = trainer.step_graph.stats.__dict__
            if trainer.step_graph.stats.capture_traceback:
                print(trainer.step_graph.stats.capture_traceback, file=sys.stderr)
    try:
        torch.rand(1, device="cuda")
        out["rng_ok_after"] = True
    except Exception as exc:
        out["rng_ok_after"] = f"{type(exc).__name__}: {exc}"[:300]
    out["losses"] = losses
    return out


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print("PROBE " + json.dumps(probe(sys.argv[2]), default=str), flush=True)
        return
    for name in sys.argv[1:] or [*VARIANTS, "recovery"]:
        run = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, timeout=300)
        sys.stderr.write(run.stderr[-6000:])
        lines = [line for line in run.stdout.splitlines() if line.startswith("PROBE ")]
        result = json.loads(lines[-1][6:]) if lines else {"variant": name, "crashed": run.stderr[-2000:]}
        print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
