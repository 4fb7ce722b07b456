"""UNet call acceleration (ednerf_ns.accel.unet_graph): graph bookkeeping on the CPU, fallbacks, the hook in
LatentDiffusion, and that the SD 1.5 UNet's forward pass never reads device values on the host."""

from __future__ import annotations

import contextlib

import pytest
import torch

from ednerf_ns.accel.unet_graph import UNetAcceleration, UNetRunner, cuda_graph_capture, simulated_capture


@pytest.fixture(autouse=True)
def one_thread():
    """These UNets are tiny: intra-op threads only add spin-waiting (many times slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet(tiny_sd):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").eval().requires_grad_(False)


def inputs(unet, size: int = 8, seed: int = 0, batch: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return x, t, text


def eager(unet, x, t, text):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=text).sample


def test_replayed_calls_match_eager_calls_for_new_inputs(unet):
    """The static buffers must take every new input: latents, timesteps and text embeddings (a changed prompt)."""
    runner = UNetRunner(unet, UNetAcceleration(cuda_graph=True), capture=simulated_capture)
    outputs = []
    for seed in range(4):
        x, t, text = inputs(unet, seed=seed)
        out = runner(x, t, text)
        outputs.append(out)
        torch.testing.assert_close(out, eager(unet, x, t, text))
    assert runner.stats.captures == 1 and runner.stats.replays == 4 and runner.stats.direct_calls == 0
    # Each call hands out its own tensor: the next replay must not overwrite an earlier result.
    assert not torch.equal(outputs[0], outputs[1])
    torch.testing.assert_close(outputs[0], eager(unet, *inputs(unet, seed=0)))


def test_one_graph_per_view_size_up_to_the_cap(unet):
    runner = UNetRunner(unet, UNetAcceleration(cuda_graph=True, max_graphs=2), capture=simulated_capture)
    for size in (8, 16, 8, 24, 16):
        x, t, text = inputs(unet, size=size, seed=size)
        torch.testing.assert_close(runner(x, t, text), eager(unet, x, t, text))
    assert runner.stats.captures == 2
    assert runner.stats.shapes == [(4, 4, 8, 8), (4, 4, 16, 16)]
    assert runner.stats.replays == 4 and runner.stats.direct_calls == 1  # 24 x 24 runs without a graph


def test_failed_capture_falls_back_to_eager_for_good(unet, capsys):
    calls = []

    def broken(fn, warmup):
        calls.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    runner = UNetRunner(unet, UNetAcceleration(cuda_graph=True), capture=broken)
    for seed in range(3):
        x, t, text = inputs(unet, seed=seed)
        torch.testing.assert_close(runner(x, t, text), eager(unet, x, t, text))
    assert len(calls) == 1  # no retry at every step
    assert "not permitted" in (runner.stats.capture_failure or "")
    assert runner.stats.direct_calls == 3 and runner.stats.replays == 0
    assert "CUDA graph capture of the UNet failed" in capsys.readouterr().out


def test_every_acceleration_is_a_no_op_off_cuda(unet):
    runner = UNetRunner(unet, UNetAcceleration(cuda_graph=True, compile=True, channels_last=True))
    assert not (runner.options.cuda_graph or runner.options.compile or runner.options.channels_last)
    x, t, text = inputs(unet)
    torch.testing.assert_close(runner(x, t, text), eager(unet, x, t, text))
    assert runner.stats.captures == 0 and runner.stats.direct_calls == 1
    assert unet.conv_in.weight.is_contiguous()


def test_a_runner_without_channels_last_restores_the_default_layout(unet):
    """The memory format belongs to the shared module: turning the option off must really turn it off."""
    x, t, text = inputs(unet)
    expected = eager(unet, x, t, text)
    unet.to(memory_format=torch.channels_last)  # as a CUDA runner with channels_last leaves it
    assert not unet.conv_in.weight.is_contiguous()
    UNetRunner(unet, UNetAcceleration())
    assert unet.conv_in.weight.is_contiguous()
    torch.testing.assert_close(eager(unet, x, t, text), expected)


def test_latent_diffusion_hook_is_lazy_and_exact(tiny_sd):
    from ednerf_ns.models2d.diffusion import LatentDiffusion

    diffusion = LatentDiffusion(str(tiny_sd), "cpu")
    diffusion.set_unet_acceleration(UNetAcceleration(cuda_graph=True))
    assert diffusion.loaded_parts() == []  # choosing options never loads the UNet
    x, t, text = inputs(diffusion.unet, seed=3)
    out = diffusion.predict_noise(x, t, text)
    torch.testing.assert_close(out, eager(diffusion.unet, x, t, text).float())
    runner = diffusion.unet_runner
    assert not runner.options.cuda_graph  # CPU: eager
    diffusion.set_unet_acceleration(UNetAcceleration(cuda_graph=True))
    assert diffusion.unet_runner is runner  # same options: kept
    diffusion.set_unet_acceleration(UNetAcceleration())
    assert diffusion.unet_runner is not runner


def test_edit_model_defaults_to_cuda_graph():
    from ednerf_ns.configs import ed_nerf_edit_trainer

    model = ed_nerf_edit_trainer().pipeline.model
    assert model.unet_cuda_graph is True
    assert model.unet_compile is False


def test_sd15_unet_forward_reads_nothing_back_to_the_host():
    """A CUDA graph cannot contain a host synchronisation. On the meta device tensors have shapes but no values,
    so any `.item()`, `bool(tensor)` or data-dependent shape in the SD 1.5 UNet's forward would raise here."""
    from diffusers import UNet2DConditionModel

    from ednerf_ns.bench.gpu import SD15_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET).half()
        x = torch.empty(4, 4, 64, 64, dtype=torch.float16)
        t = torch.zeros(4, dtype=torch.long)
        text = torch.empty(4, 77, 768, dtype=torch.float16)
    runner = UNetRunner(unet, UNetAcceleration(cuda_graph=True), capture=simulated_capture)
    out = runner(x, t, text)
    assert out.shape == (4, 4, 64, 64) and out.dtype == torch.float16
    assert runner.stats.replays == 1
    with pytest.raises(Exception):  # noqa: B017 - the meta device really refuses host reads
        bool(x.sum() > 0)


def test_cuda_graph_capture_warms_up_then_captures_on_one_stream(monkeypatch):
    """The CUDA-only capture function, run against stand-ins for torch.cuda's stream and graph objects: warm-up
    calls on the side stream, ordered after and before the current stream's work, then one captured call there."""
    log: list[str] = []

    class Stream:
        def wait_stream(self, other) -> None:
            log.append("wait")

    side = Stream()

    class Graph:
        def replay(self) -> None:
            log.append("replay")

    class Capture:
        def __init__(self, graph, stream=None, capture_error_mode="global") -> None:
            assert isinstance(graph, Graph) and stream is side and capture_error_mode == "thread_local"

        def __enter__(self) -> None:
            log.append("capture")

        def __exit__(self, *exc) -> None:
            log.append("end")

    monkeypatch.setattr(torch.cuda, "Stream", lambda: side)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext() if s is side else 1 / 0)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Capture)

    def fn() -> torch.Tensor:
        log.append("call")
        return torch.ones(2)

    replay, output = cuda_graph_capture(fn, warmup=2)
    assert log == ["wait", "call", "call", "wait", "capture", "call", "end"]
    replay()
    assert log[-1] == "replay" and torch.equal(output, torch.ones(2))
