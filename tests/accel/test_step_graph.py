"""Whole training steps replayed from a graph (ednerf_ns.accel.step_graph), checked on the CPU.

`recorded_capture` gives a CUDA graph's semantics on the CPU: operators replay on the same tensors, Python does
not run again. So these tests catch what a real capture would get wrong - inputs baked in at capture, Python
state that a replay does not update, gradients that do not reach the optimizer - and they compare whole edits
run through the graph with the same edits run eagerly, step for step.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from conftest import edit_config, train_config

from ednerf_ns.accel.step_graph import CaptureError, StepGraphRunner, config_key, recorded_capture


# ---------------------------------------------------------------------------------------------------- the runner
def toy_step(weight: torch.Tensor, state: dict):
    def fn(inputs: dict[str, torch.Tensor]):
        noise = torch.randn_like(inputs["x"])
        loss = ((inputs["x"] * weight + noise - inputs["y"]) ** 2).mean()
        loss.backward()
        state["calls"] += 1  # Python: runs at warm-up and capture only
        return loss

    return fn


def run_toy(runner: StepGraphRunner | None, steps: int = 6) -> tuple[torch.Tensor, list[float], dict]:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([weight], lr=0.1)
    state = {"calls": 0}
    losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        inputs = {"x": torch.full((3,), float(step + 1)), "y": torch.arange(3.0)}
        fn = toy_step(weight, state)
        loss = fn(inputs) if runner is None else runner.run("key", inputs, fn, [weight])
        losses.append(float(loss.detach()))
        opt.step()
    return weight.detach().clone(), losses, state


def test_runner_matches_eager_steps_and_replays_without_python():
    eager_weight, eager_losses, _ = run_toy(None)
    runner = StepGraphRunner(capture=recorded_capture)
    weight, losses, state = run_toy(runner)
    assert losses == eager_losses  # new inputs every step, fresh noise every replay, same order of draws
    assert torch.equal(weight, eager_weight)  # the gradients the replays wrote reached the optimizer
    assert (runner.stats.eager_steps, runner.stats.captures, runner.stats.replays) == (1, 1, 4)
    assert state["calls"] == 2  # warm-up + capture: replays ran no Python


def test_recorder_replays_like_a_graph_python_rebinding_is_not_replayed():
    counter = {"t": torch.zeros(())}
    inplace = torch.zeros(())

    def fn():
        counter["t"] = counter["t"] + 1  # rebinds a Python name: a graph keeps adding to the *captured* input
        inplace.add_(1)  # in place: a graph keeps counting
        return counter["t"]

    replay, out, executed, _ = recorded_capture(fn, None)
    for _ in range(3):
        replay()
    assert executed and float(inplace) == 4.0
    assert float(counter["t"]) == 1.0 and float(out) == 1.0


@pytest.mark.parametrize(
    "body",
    [lambda x: float(x.sum()), lambda x: x[x > 0], lambda x: torch.tensor([1.0, 2.0]) + x, lambda x: x.nonzero()],
    ids=["item", "bool-index", "host-tensor", "nonzero"],
)
def test_recorder_refuses_what_a_cuda_graph_cannot_capture(body):
    with pytest.raises(CaptureError):
        recorded_capture(lambda: body(torch.randn(2)), None)


def test_failed_capture_falls_back_to_eager_steps(capsys):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.ones(3))
    runner = StepGraphRunner(capture=recorded_capture)

    def fn(inputs):
        loss = (inputs["x"] * weight).sum()
        loss.backward()
        return float(loss)  # reads a value on the host: cannot be a graph

    results = [runner.run("key", {"x": torch.full((3,), float(i))}, fn, [weight]) for i in range(4)]
    assert results == [0.0, 3.0, 6.0, 9.0]
    assert runner.stats.capture_failure is not None and "_local_scalar_dense" in runner.stats.capture_failure
    assert runner.stats.captures == 0 and runner.stats.eager_steps == 4
    captured = capsys.readouterr()
    assert "running steps eagerly" in captured.out + captured.err


def test_runner_keeps_one_graph_per_key_and_a_limit():
    weight = torch.nn.Parameter(torch.ones(2))
    runner = StepGraphRunner(capture=recorded_capture, max_graphs=1)

    def fn(inputs):
        loss = (inputs["x"] * weight).sum()
        loss.backward()
        return loss

    for key in ["a", "a", "a", "b", "b", "b"]:
        runner.run(key, {"x": torch.ones(2)}, fn, [weight])
    assert runner.stats.keys == ["a"]
    assert (runner.stats.captures, runner.stats.replays, runner.stats.eager_steps) == (1, 1, 4)


# ---------------------------------------------------------------------------------------------------- graph keys
def changed(value):
    """Another value of the same kind as `value` (for options of any type: nested configs get a field changed)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5 if math.isfinite(value) else 0.0
    if isinstance(value, str):
        return value + " (changed)"
    if value is None:
        return "set"
    if isinstance(value, (list, tuple)):
        return type(value)([*value, value[0] if value else 1])
    if isinstance(value, dict):
        return {**value, "added": 1.0}
    if isinstance(value, type):
        return object
    if dataclasses.is_dataclass(value):
        name = next(f.name for f in dataclasses.fields(value) if not f.name.startswith("_"))
        return dataclasses.replace(value, **{name: changed(getattr(value, name))})
    raise AssertionError(f"no changed value for {value!r}")


@dataclasses.dataclass
class Inner:
    rate: float = 1.0
    names: list[str] = dataclasses.field(default_factory=lambda: ["a"])


@dataclasses.dataclass
class Options:
    size: int = 2
    inner: Inner = dataclasses.field(default_factory=Inner)
    live: str = "read from a buffer"
    table: dict = dataclasses.field(default_factory=lambda: {"x": (1, 2.5)})


def test_config_key_sees_every_nested_option_but_the_exempt_ones():
    base = config_key(Options(), exempt={"live"})
    assert config_key(Options(), exempt={"live"}) == base and hash(config_key(Options(), {"live"})) == hash(base)
    for options in (Options(size=3), Options(inner=Inner(rate=1.5)), Options(inner=Inner(names=["a", "b"])),
                    Options(table={"x": (1, 2.0)}), Options(table={"x": [1, 2.5]})):  # fmt: skip
        assert config_key(options, exempt={"live"}) != base, options
    assert config_key(Options(live="another prompt"), exempt={"live"}) == base
    assert config_key(Options(live="another prompt")) != config_key(Options())
    assert repr(base).startswith("options-") and len(repr(base)) < 24  # logged: a short digest
    with pytest.raises(TypeError, match="cannot represent"):
        config_key(Options(inner=object()))  # type: ignore[arg-type]


def test_every_edit_option_changes_the_step_graph_key_or_is_exempt():
    """A new option cannot be forgotten: every field of the edit model's config is in the step graph's key, except
    the documented few that a step reads from device buffers."""
    from ednerf_ns.edit_model import EdNerfEditModel, EdNerfEditModelConfig

    exempt = EdNerfEditModel.STEP_GRAPH_EXEMPT
    names = [f.name for f in dataclasses.fields(EdNerfEditModelConfig)]
    assert set(exempt) <= set(names) and set(exempt) == {"prompt", "source_prompt", "guidance_scale"}
    base = EdNerfEditModelConfig(prompt="a blue sphere", source_prompt="a red sphere")
    key = config_key(base, exempt)
    for name in names:
        config = copy.deepcopy(base)
        setattr(config, name, changed(getattr(base, name)))
        assert (config_key(config, exempt) != key) == (name not in exempt), name


# ---------------------------------------------------------------------------------------------------- whole steps
def setup_trainer(config, graph: bool):
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    from ednerf_ns.tools.runs import start_run

    start_run(config)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.step_graph = StepGraphRunner(capture=recorded_capture) if graph else None
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)

    def step(i: int):
        trainer.pipeline.train()
        for cb in trainer.callbacks:
            cb.run_callback_at_location(i, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        out = trainer.train_iteration(i)
        for cb in trainer.callbacks:
            cb.run_callback_at_location(i, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        return out

    return trainer, step


def run_steps(config, graph: bool, steps: int, changes: dict[int, dict] | None = None):
    """`steps` training steps; `changes` sets model config values before given steps (as the viewer does)."""
    trainer, step = setup_trainer(config, graph)
    losses = []
    for i in range(steps):
        for name, value in (changes or {}).get(i, {}).items():
            setattr(trainer.pipeline.model.config, name, value)
        loss, _, metrics = step(i)
        losses.append(float(loss))
    params = {k: v.detach().clone() for k, v in trainer.pipeline.model.named_parameters()}
    return trainer, losses, params


def assert_same_run(eager, graph):
    _, eager_losses, eager_params = eager
    _, graph_losses, graph_params = graph
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-7)
    for name, value in eager_params.items():
        torch.testing.assert_close(graph_params[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_edit_steps_through_the_graph_equal_eager_steps(trained_run, scene, cache_dir, tmp_path):
    # The viewer's controls change the target prompt and the guidance scale mid-run (read from buffers: no new
    # graph); an infinite scale makes the guidance non-finite, which the device-side counter must count in replayed
    # steps too. Another option changed mid-run must give a new graph, never a replay of the old one.
    steps = 16
    changes = {3: {"guidance_weight": 0.5}, 6: {"prompt": "a green sphere"}, 12: {"guidance_scale": float("inf")}}

    def config(name):
        return edit_config(trained_run, scene, tmp_path / name, cache_dir, steps=steps)

    eager = run_steps(config("eager"), graph=False, steps=steps, changes=changes)
    graph = run_steps(config("graph"), graph=True, steps=steps, changes=changes)
    stats = graph[0].step_graph.stats
    # steps 0-9 update the proposal networks, later ones every other step: one graph for steps 0-2, two after the
    # guidance weight changed at step 3; each warmed up once
    assert (stats.captures, stats.eager_steps, stats.replays) == (3, 3, steps - 6), stats
    assert_same_run(eager, graph)
    skipped = [int(run[0].pipeline.model._skipped_steps) for run in (eager, graph)]
    assert skipped == [steps - 12, steps - 12]


def test_training_steps_through_the_graph_equal_eager_steps(scene, tiny_sd, cache_dir, tmp_path):
    # Steps 0-2 anneal the proposal weights (the exponent changes every step, in a device buffer the graph
    # reads); steps 0-9 update the proposal networks every step, later steps every other step: two graphs, both
    # replayed, the anneal steps included.
    steps = 18

    def config(name):
        c = train_config(scene, tiny_sd, tmp_path / name, cache_dir, steps=steps)
        c.pipeline.model.proposal_weights_anneal_max_num_iters = 3
        return c

    eager = run_steps(config("eager"), graph=False, steps=steps)
    graph = run_steps(config("graph"), graph=True, steps=steps)
    stats = graph[0].step_graph.stats
    # the runner sees every step: each key's first step warms up, its second is captured
    assert (stats.captures, stats.eager_steps, stats.replays) == (2, 2, steps - 4), stats
    assert_same_run(eager, graph)


def test_steps_the_graph_cannot_express_run_eagerly(scene, tiny_sd, cache_dir, tmp_path):
    config = train_config(scene, tiny_sd, tmp_path, cache_dir, steps=4)
    config.pipeline.model.camera_optimizer.mode = "SO3xR3"  # rays from the optimised poses: new every step
    trainer, step = setup_trainer(config, graph=True)
    for i in range(4):
        step(i)
    assert trainer.step_graph.stats.captures == 0 and trainer.step_graph.stats.replays == 0


def test_step_graph_is_off_on_the_cpu(trained_run, scene, cache_dir, tmp_path):
    config = edit_config(trained_run, scene, tmp_path, cache_dir, steps=1)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert trainer.step_graph is None
