"""Fast UNet calls for the edit step: CUDA-graph replay, and optionally torch.compile and channels_last.

One edit step runs the Stable Diffusion UNet once (batch 4 at the view's latent size). At SD 1.5 size that call
launches about a thousand small kernels, and in eager mode about half of its time is the CPU launching them
(one H100, fp16, 64 x 64: 35 ms eager, 17.6 ms replayed from a CUDA graph). A CUDA graph records the kernels of
one call once and replays them with a single launch.

A graph replays fixed memory addresses with fixed shapes, so `UNetRunner` keeps, per input signature (shapes,
dtypes, device), static input buffers, the captured graph and its output buffer. Each call copies the new
inputs into the buffers (the noisy latents and timesteps change every step; the text embeddings only when a
prompt changes, but copying 4 x 77 x 768 halves costs about a microsecond, less than checking whether they
changed), replays, and returns a copy of the output. Views of different sizes get their own graphs, up to
`max_graphs`; further sizes run eagerly rather than holding one more memory pool each. If a capture fails
(an operation that cannot be captured, a driver refusal) the runner warns once and runs eagerly from then on.

Everything here is a no-op off CUDA: on the CPU the runner calls the UNet eagerly. Tests exercise the graph
bookkeeping on the CPU through the `capture` hook (`simulated_capture`), which stands in for the CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ednerf_ns.errors import warn

# capture(fn, warmup) -> (replay, output): run `fn` `warmup` times, record one call, and return a function that
# re-runs the recorded call (reading fn's input buffers, writing into `output`) and the output buffer.
CaptureFn = Callable[[Callable[[], Tensor], int], tuple[Callable[[], None], Tensor]]


@dataclass(frozen=True)
class UNetAcceleration:
    """How `LatentDiffusion.predict_noise` runs the UNet. Only applies on CUDA; elsewhere the UNet runs eagerly."""

    cuda_graph: bool = False
    """Replay the UNet call from a CUDA graph captured once per input shape."""
    compile: bool = False
    """torch.compile the UNet (inductor, default mode). The first call compiles for a minute or more."""
    channels_last: bool = False
    """Convert the UNet's convolution weights (and its input) to channels_last memory format."""
    max_graphs: int = 4
    """Most input shapes (view sizes) that get a CUDA graph; calls of further shapes run without one."""
    warmup: int = 2
    """Eager calls on the capture stream before a capture (lazy initialisation must not happen while capturing)."""


@dataclass
class RunnerStats:
    """What a runner did so far (read by the benchmark and the tests)."""

    captures: int = 0
    """CUDA graphs captured."""
    replays: int = 0
    """Calls served by replaying a graph."""
    direct_calls: int = 0
    """Calls that ran the UNet directly (no graph: disabled, too many shapes, or after a failed capture)."""
    capture_failure: str | None = None
    """Why graph capture was given up, if it was."""
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    """Sample shapes that have a graph."""


@dataclass
class _Graph:
    sample: Tensor
    timestep: Tensor
    text: Tensor
    output: Tensor
    replay: Callable[[], None]


class UNetRunner:
    """eps = runner(sample, timestep, text): the UNet's noise prediction, by graph replay where possible."""

    def __init__(self, unet: torch.nn.Module, options: UNetAcceleration, capture: CaptureFn | None = None) -> None:
        """`capture` replaces the CUDA graph capture (tests); without it every acceleration is off unless the UNet
        lives on a CUDA device."""
        self.unet = unet
        on_cuda = next(unet.parameters()).device.type == "cuda"
        if not on_cuda:
            graph = options.cuda_graph and capture is not None
            options = replace(options, cuda_graph=graph, compile=False, channels_last=False)
        self.options = options
        self._capture_fn: CaptureFn = capture or cuda_graph_capture
        self.stats = RunnerStats()
        self._graphs: dict[tuple, _Graph] = {}
        # The memory format is a property of the (shared) module: set it either way, so switching
        # channels_last off after a run that had it on really restores the default layout.
        unet.to(memory_format=torch.channels_last if options.channels_last else torch.contiguous_format)
        self._call: Callable[..., Tensor] = torch.compile(unet) if options.compile else unet  # type: ignore[assignment]

    def run_direct(self, sample: Tensor, timestep: Tensor, text: Tensor) -> Tensor:
        """The UNet call without a graph (eager, or compiled when `compile` is on)."""
        if self.options.channels_last and sample.dim() == 4:
            sample = sample.contiguous(memory_format=torch.channels_last)
        return self._call(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

    @torch.no_grad()
    def __call__(self, sample: Tensor, timestep: Tensor, text: Tensor) -> Tensor:
        if (
            not self.options.cuda_graph
            or self.stats.capture_failure is not None
            or not torch.is_tensor(timestep)
            or _inside_capture(sample)
        ):
            # Inside a capture (the whole step is being recorded, see ednerf_ns.accel.step_graph) the call's kernels
            # become part of that graph; replaying a graph of our own there is not possible.
            self.stats.direct_calls += 1
            return self.run_direct(sample, timestep, text)
        key = (
            tuple(sample.shape),
            sample.dtype,
            tuple(timestep.shape),
            timestep.dtype,
            tuple(text.shape),
            text.dtype,
            str(sample.device),
            torch.is_autocast_enabled(),
        )
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= self.options.max_graphs:
                self.stats.direct_calls += 1
                return self.run_direct(sample, timestep, text)
            graph = self._capture(key, sample, timestep, text)
            if graph is None:
                self.stats.direct_calls += 1
                return self.run_direct(sample, timestep, text)
        graph.sample.copy_(sample)
        graph.timestep.copy_(timestep)
        graph.text.copy_(text)
        graph.replay()
        self.stats.replays += 1
        # The output buffer is overwritten by the next replay: hand out a copy (128 KiB at SD 1.5 size).
        return graph.output.clone()

    def _capture(self, key: tuple, sample: Tensor, timestep: Tensor, text: Tensor) -> _Graph | None:
        memory_format = torch.channels_last if self.options.channels_last else torch.contiguous_format
        static_sample = sample.clone(memory_format=memory_format)
        static_timestep = timestep.to(sample.device, copy=True)
        static_text = text.clone()

        def call() -> Tensor:
            return self._call(static_sample, static_timestep, encoder_hidden_states=static_text, return_dict=False)[0]

        try:
            replay, output = self._capture_fn(call, self.options.warmup)
        except Exception as exc:  # capture errors come from torch, the driver or a model op; all mean "no graph"
            self.stats.capture_failure = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            self._graphs.clear()
            warn(
                f"CUDA graph capture of the UNet failed ({self.stats.capture_failure}); running it eagerly "
                f"(set --pipeline.model.unet-cuda-graph False to skip the attempt)"
            )
            return None
        graph = _Graph(static_sample, static_timestep, static_text, output, replay)
        self._graphs[key] = graph
        self.stats.captures += 1
        self.stats.shapes.append(tuple(sample.shape))
        return graph


def _inside_capture(sample: Tensor) -> bool:
    from ednerf_ns.accel.step_graph import is_capturing

    return is_capturing() or (sample.is_cuda and torch.cuda.is_current_stream_capturing())


def cuda_graph_capture(fn: Callable[[], Tensor], warmup: int) -> tuple[Callable[[], None], Tensor]:
    """Capture `fn` in a CUDA graph (the pattern of PyTorch's CUDA graph notes).

    Warm-up runs on the capture stream first (cuBLAS/cuDNN handles and workspaces are created per stream, and
    creating them while capturing is illegal). `thread_local` capture mode lets other threads (the viewer's
    renderer) keep using CUDA while this thread captures.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        output = fn()
    return graph.replay, output


def simulated_capture(fn: Callable[[], Tensor], warmup: int) -> tuple[Callable[[], None], Tensor]:
    """A stand-in for `cuda_graph_capture` that runs anywhere: "replay" recomputes `fn` from its (static) input
    buffers into the same output buffer. Lets CPU tests check the buffer bookkeeping a real graph relies on."""
    for _ in range(warmup):
        fn()
    output = fn()

    def replay() -> None:
        output.copy_(fn())

    return replay, output
