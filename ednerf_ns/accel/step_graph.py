"""Whole training steps replayed from a CUDA graph.

An ed-nerf(-edit) step launches about a thousand small kernels from Python: nerfstudio's proposal sampler, the
hash grids and MLPs, the refinement layer, the losses and their backward, and (when editing) the UNet. At 4096
rays per view most of them finish faster than Python can launch them, so an eager step is bound by the host. A
CUDA graph records the kernels of one step once and replays them with one launch.

A replay re-runs *kernels* on the same memory with the same scalar arguments; the *Python* of the step ran once,
at capture. `StepGraphRunner` makes that safe for a training step:

- per-step tensors (a view's rays and targets, prompt embeddings, the guidance scale) live in static buffers,
  into which each call copies the new values before the replay;
- every Python decision the step depends on is part of the graph's *key*: the shapes of its inputs, what the
  model decides in Python per step (whether the proposal networks update), and a digest of every option of the
  model's config (`config_key`), so that no option - today's or one added later - can change without a new graph;
  a new key gets its own graph, up to `max_graphs`;
  a key is first run eagerly once (warm-up: lazy initialisation must not happen during a capture), captured
  at its second occurrence, and replayed from then on;
- the step function does forward *and* backward; the gradients it writes are static tensors too, re-attached to
  the parameters after each replay, and the optimizer steps eagerly afterwards (cheap: a few fused kernels);
- what a step cannot do inside a graph (synchronise with the host, copy from host memory) makes the capture
  fail; the runner then warns once and runs every later step eagerly.

All graphs share one memory pool. That is safe because steps run one after another and each step's outputs
(losses, metrics, gradients) are consumed before the next replay; a caller must not keep them longer.

`recorded_capture` stands in for the CUDA capture on the CPU (tests): it records every operator the step
dispatches and "replays" by re-running those operators on the same tensors, with Python not involved - the
semantics of a CUDA graph - and it refuses the operators that would synchronise with the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import threading
import traceback
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from ednerf_ns.errors import UserError, first_line, info, warn

StepFn = Callable[[dict[str, Tensor]], Any]
# capture(fn, pool, stream) -> (replay, outputs, executed, pool): record fn() (which reads static buffers and runs
# forward + backward) on `stream`, return a function that re-runs the recording, fn's outputs, whether capturing
# already executed the step once (the CPU recorder does, a CUDA capture does not), and the memory pool to share
# with later captures.
CaptureFn = Callable[[Callable[[], Any], Any, Any], tuple[Callable[[], None], Any, bool, Any]]

_capturing = threading.local()


def is_capturing() -> bool:
    """True while a step is being captured (CUDA stream capture, or the CPU recorder): code that refreshes
    per-step inputs must not run then, since the copy would be recorded with its source fixed."""
    if getattr(_capturing, "active", False):
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@contextlib.contextmanager
def _capturing_scope() -> Iterator[None]:
    previous = getattr(_capturing, "active", False)
    _capturing.active = True
    try:
        yield
    finally:
        _capturing.active = previous


class ConfigKey(tuple):
    """The options part of a graph's key (see `config_key`): (field, value) pairs that compare and hash as a tuple;
    shown as a short digest, since keys are logged and written to the benchmark's JSON."""

    def __repr__(self) -> str:
        return "options-" + hashlib.blake2b(tuple.__repr__(self).encode(), digest_size=6).hexdigest()


def config_key(config: Any, exempt: Collection[str] = ()) -> ConfigKey:
    """Every field of the dataclass `config` (nested dataclasses, lists, dicts and types included), except the
    top-level fields named in `exempt`: the part of a graph's key that stands for the step's options.

    Derived from the whole config rather than a hand-kept list, so that no option - today's or one added later -
    can be forgotten: a graph captured under one value of any option is never replayed under another. Only options
    that the step provably reads from device buffers refreshed before every replay may be exempt (see the model's
    `STEP_GRAPH_EXEMPT`). Computed at every step: a direct walk of the fields, no copies.
    """
    fields = getattr(type(config), "__dataclass_fields__", None)
    if fields is None:
        raise TypeError(f"config_key needs a dataclass, not {type(config).__name__}")
    return ConfigKey((name, _canonical(getattr(config, name))) for name in fields if name not in exempt)


_PLAIN = frozenset({type(None), bool, int, float, str, bytes})


def _canonical(value: Any) -> Any:
    """`value` as nested tuples of plain values, equal exactly when the values are equal (and of the same types)."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind in (list, tuple):
        return (kind.__name__, tuple(_canonical(v) for v in value))
    if kind is dict:
        return ("dict", tuple(sorted(((repr(_canonical(k)), _canonical(v)) for k, v in value.items()))))
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if dataclasses.is_dataclass(value):
        names = kind.__dataclass_fields__
        return (kind.__qualname__, tuple((name, _canonical(getattr(value, name))) for name in names))
    if isinstance(value, enum.Enum):
        return (kind.__qualname__, value.value)
    if isinstance(value, PurePath):
        return (kind.__name__, str(value))
    if isinstance(value, (set, frozenset)):
        return (kind.__name__, tuple(sorted(repr(_canonical(v)) for v in value)))
    # Anything else has no faithful value to compare (an object's default repr is its address): refuse rather than
    # risk a key that stays the same when the option changes.
    raise TypeError(f"config_key cannot represent {kind.__name__} values; add a case for them")


class CaptureError(RuntimeError):
    """The step does something a graph cannot replay (e.g. it synchronises with the host)."""


@dataclass
class StepGraphStats:
    """What a runner did (read by the benchmark and the tests)."""

    captures: int = 0
    """Graphs captured."""
    replays: int = 0
    """Steps served by a replay."""
    eager_steps: int = 0
    """Steps run eagerly (warm-ups of new keys, steps without a key, too many keys, after a failure)."""
    capture_failure: str | None = None
    """Why capturing was given up, if it was."""
    capture_traceback: str | None = None
    """Where the error that broke the capture was raised (for diagnosis)."""
    keys: list[str] = field(default_factory=list)
    """The keys that have a graph."""


@dataclass
class _Entry:
    inputs: dict[str, Tensor]
    outputs: Any
    grads: list[Tensor | None]
    replay: Callable[[], None]


class StepGraphRunner:
    """outputs = runner.run(key, inputs, fn, params): fn(inputs) (forward + backward), from a graph where possible."""

    def __init__(self, capture: CaptureFn | None = None, max_graphs: int = 4, name: str = "training step") -> None:
        self._capture: CaptureFn = capture or cuda_capture
        self.max_graphs = max_graphs
        self.name = name
        self.stats = StepGraphStats()
        self._entries: dict[Any, _Entry] = {}
        self._warmed: set[Any] = set()
        self._pool: Any = None
        self._stream: Any = None

    @property
    def enabled(self) -> bool:
        return self.stats.capture_failure is None

    def run(self, key: Any, inputs: dict[str, Tensor], fn: StepFn, params: list[Tensor]) -> Any:
        """Run one step. `key` None runs eagerly. `params` are the tensors whose `.grad` fn's backward writes."""
        entry = self._entries.get(key) if key is not None else None
        if entry is not None:
            return self._replay(entry, inputs, params)
        graphable = key is not None and self.enabled and len(self._entries) < self.max_graphs
        if graphable and key in self._warmed:
            try:
                return self._capture_and_run(key, inputs, fn, params)
            except UserError:
                raise
            except Exception as exc:  # torch, the driver or an operator: all mean "this step cannot be a graph"
                self._give_up(exc, params)
        if graphable:
            self._warmed.add(key)
        self.stats.eager_steps += 1
        with self.stream_scope():
            return fn(inputs)

    def _replay(self, entry: _Entry, inputs: dict[str, Tensor], params: list[Tensor]) -> Any:
        for name, static in entry.inputs.items():
            static.copy_(inputs[name])
        entry.replay()
        self._attach(entry, params)
        self.stats.replays += 1
        return entry.outputs

    def _capture_and_run(self, key: Any, inputs: dict[str, Tensor], fn: StepFn, params: list[Tensor]) -> Any:
        static = {name: value.clone() for name, value in inputs.items()}
        for p in params:
            p.grad = None  # backward must allocate fresh gradients inside the graph (and overwrite them on replay)
        with _capturing_scope():
            replay, outputs, executed, pool = self._capture(lambda: fn(static), self._pool, self._cuda_stream())
        self._pool = pool
        entry = _Entry(static, outputs, [p.grad for p in params], replay)
        self._entries[key] = entry
        self.stats.captures += 1
        self.stats.keys.append(str(key))
        info(f"{self.name}: captured CUDA graph {len(self._entries)} (of at most {self.max_graphs}); replaying it")
        if executed:
            self._attach(entry, params)
            return outputs
        return self._replay(entry, inputs, params)

    @staticmethod
    def _attach(entry: _Entry, params: list[Tensor]) -> None:
        # nerfstudio's zero_grad sets .grad to None every step; the graph's gradient tensors stay where they are.
        for p, g in zip(params, entry.grads, strict=True):
            p.grad = g

    def _give_up(self, exc: BaseException, params: list[Tensor]) -> None:
        self.stats.capture_failure = f"{type(exc).__name__}: {first_line(exc)}"
        first = exc
        if exc.__context__ is not None:  # the error that broke the capture, when capture_end reports another
            first = exc.__context__
            self.stats.capture_failure += f" (after {type(first).__name__}: {first_line(first)})"
        self.stats.capture_traceback = "".join(traceback.format_exception(first))[-4000:]
        self._entries.clear()
        self._pool = None
        for p in params:
            p.grad = None
        warn(
            f"CUDA graph capture of the {self.name} failed ({self.stats.capture_failure}); running steps eagerly "
            f"(set --pipeline.model.step-cuda-graph False to skip the attempt)"
        )

    @contextlib.contextmanager
    def stream_scope(self) -> Iterator[None]:
        """Run everything a training step does (eager steps, replays, the optimizer) on the capture stream.

        Two reasons. cuBLAS/cuDNN create per-stream handles and workspaces lazily, which must have happened before
        a capture on that stream. And autograd remembers, per parameter, the stream its gradient was first
        accumulated on: a parameter first trained on the default (legacy) stream makes a later capture of the
        backward pass fail ('operation would make the legacy stream depend on a capturing blocking stream').
        The caller's stream waits for the step at the end, so whatever runs between steps sees its results.
        A no-op off CUDA.
        """
        stream = self._cuda_stream()
        if stream is None or torch.cuda.current_stream() == stream:
            yield
            return
        current = torch.cuda.current_stream()
        stream.wait_stream(current)
        try:
            with torch.cuda.stream(stream):
                yield
        finally:
            current.wait_stream(stream)

    def _cuda_stream(self) -> Any:
        capture = self._capture.func if isinstance(self._capture, functools.partial) else self._capture
        if capture is not cuda_capture or not torch.cuda.is_available():
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream


def cuda_capture(
    fn: Callable[[], Any], pool: Any, stream: Any, mode: str = "thread_local"
) -> tuple[Callable[[], None], Any, bool, Any]:
    """Capture fn() in a CUDA graph on `stream` (where the warm-up ran), sharing `pool`. Capturing executes
    nothing: the caller replays once for the step itself.

    `thread_local` capture mode: only this thread's CUDA calls are checked. The backward pass runs on autograd's
    worker thread and nerfstudio's viewer renders from its own thread (between steps, under the trainer's lock).
    """
    graph = torch.cuda.CUDAGraph()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode=mode):
            outputs = fn()
    except Exception:
        try:
            recover_cuda_rng(stream)
        except Exception as exc:
            raise UserError(
                f"a failed CUDA graph capture left CUDA's random number generator unusable ({first_line(exc)}); "
                f"rerun with --pipeline.model.step-cuda-graph False"
            ) from None
        raise
    torch.cuda.current_stream().wait_stream(stream)
    return graph.replay, outputs, False, graph.pool()


def recover_cuda_rng(stream: Any) -> None:
    """After a failed capture, torch leaves the CUDA generator marked as capturing, and every later random op
    fails ('Offset increment outside graph capture'); a successful capture clears that mark."""
    torch.cuda.synchronize()
    flag = torch.zeros(1, device=torch.cuda.current_device())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        flag.add_(1)
    del graph
    torch.rand(1, device=flag.device)  # raises if the generator is still unusable


# ---------------------------------------------------------------------------------------------------- CPU stand-in
# Operators whose CUDA kernels make the host wait for the device (data-dependent shapes, values read by Python) or
# copy host data to the device: illegal while capturing a CUDA graph.
_SYNCING = {
    "aten::_local_scalar_dense",
    "aten::item",
    "aten::is_nonzero",
    "aten::equal",
    "aten::nonzero",
    "aten::nonzero_static",
    "aten::masked_select",
    "aten::unique",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::unique_dim",
}
# Host data turned into a tensor (torch.tensor(...)): on a CUDA run it is copied to the device, which a graph cannot
# contain - except 0-dim values, which CUDA kernels take as scalar arguments (e.g. `x[..., 0] = 0.5`).
_HOST_DATA = {"aten::lift_fresh", "aten::lift_fresh_copy"}


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, tuple, dict, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        host_data = name in _HOST_DATA and isinstance(args[0], Tensor) and args[0].dim() > 0
        if host_data or name in _SYNCING or (name == "aten::index" and _has_bool_index(args)):
            raise CaptureError(
                f"{name} at {_caller()} synchronises with the device (or copies host data to it) and cannot be captured"
            )
        if name == "aten::_to_copy" and kwargs.get("device") is not None:
            source = args[0]
            if isinstance(source, Tensor) and torch.device(kwargs["device"]) != source.device:
                raise CaptureError(
                    f"a copy from {source.device} to {kwargs['device']} at {_caller()} cannot be captured"
                )
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _caller() -> str:
    """file:line of the innermost frame outside torch and this module: where the offending call was made."""
    for frame in reversed(traceback.extract_stack()):
        if "/torch/" not in frame.filename and not frame.filename.endswith("step_graph.py"):
            return f"{frame.filename}:{frame.lineno}"
    return "?"


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in indices or ())


def recorded_capture(fn: Callable[[], Any], pool: Any, stream: Any = None) -> tuple[Callable[[], None], Any, bool, Any]:
    """A CPU stand-in for `cuda_capture` with a CUDA graph's semantics (see the module docstring)."""
    recorder = _Recorder()
    with recorder:
        outputs = fn()
    ops = recorder.ops

    def replay() -> None:
        with torch.no_grad():
            for func, args, kwargs, out in ops:
                fresh = func(*args, **kwargs)
                returns = func._schema.returns
                for i, (old, new) in enumerate(zip(_as_list(out), _as_list(fresh), strict=True)):
                    # Outputs that alias an input (views, in-place results) already see the new values.
                    aliased = i < len(returns) and returns[i].alias_info is not None
                    if isinstance(old, Tensor) and not aliased and old is not new:
                        old.copy_(new)

    return replay, outputs, True, pool


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (tuple, list)) else [value]
