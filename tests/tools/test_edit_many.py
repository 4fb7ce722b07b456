"""ednerf-edit: several prompts in one process, each a complete run named after its prompt, one sheet at the end."""

from __future__ import annotations

import pytest

from ednerf_ns.errors import ArgumentError
from ednerf_ns.tools import edit_many
from ednerf_ns.tools.runs import load_run


def test_arguments_split_into_prompts_and_edit_options():
    prompts, views, rest = edit_many.split_arguments(
        ["--source-run", "r", "--prompts", "a blue sphere", "a green sphere", "--sheet-views", "2", "--vis", "x"]
    )
    assert prompts == ["a blue sphere", "a green sphere"] and views == 2
    assert rest == ["--source-run", "r", "--vis", "x"]


@pytest.mark.parametrize(
    "argv",
    [["--source-run", "r"], ["--prompts", "ok", ""], ["--prompt", "x", "--prompts", "y"], ["--sheet-views", "two"]],
)
def test_bad_arguments_are_refused_in_one_line(argv):
    with pytest.raises(ArgumentError):
        edit_many.split_arguments(argv)


def test_run_names_are_folder_safe_and_unique():
    used: set[str] = set()
    assert edit_many.run_name("A Golden sphere!", used) == "a-golden-sphere"
    assert edit_many.run_name("a golden sphere", used) == "a-golden-sphere-2"
    assert edit_many.run_name("???", used) == "prompt"


def test_two_prompts_one_process(trained_run, scene, tiny_sd, cache_dir, tmp_path):
    from ednerf_ns.models2d import diffusion

    argv = [
        "--source-run", str(trained_run), "--prompts", "a blue sphere", "a green sphere",
        "--pipeline.model.source-prompt", "a red sphere", "--max-num-iterations", "3",
        "--vis", "tensorboard", "--machine.device-type", "cpu", "--output-dir", str(tmp_path),
        "--pipeline.datamanager.cache-dir", str(cache_dir), "--sheet-views", "1",
    ]  # fmt: skip
    loads = []
    original = diffusion.LatentDiffusion._load_weights
    diffusion.LatentDiffusion._load_weights = lambda self, *a: loads.append(a[-1]) or original(self, *a)
    try:
        runs = edit_many.main(argv)
    finally:
        diffusion.LatentDiffusion._load_weights = original
    assert [r.name.split("_", 2)[-1] for r in runs] == ["a-blue-sphere", "a-green-sphere"]
    for run, prompt in zip(runs, ["a blue sphere", "a green sphere"], strict=True):
        assert list((run / "nerfstudio_models").glob("step-*.ckpt")), run
        pipeline = load_run(run / "config.yml")  # what ns-viewer / ns-render / ednerf-eval load
        assert pipeline.model.config.prompt == prompt
        assert pipeline.model.config.source_prompt == "a red sphere"  # an option typed here reached every run
    # Stable Diffusion's weights load once for both prompts (the process shares one copy)
    assert sorted(loads) == sorted(set(loads)), loads
    assert list(runs[0].parent.glob("*_prompts.png"))
