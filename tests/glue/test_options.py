"""Options a user sets are the options an edit uses: the command line against the source run's config.yml, the
viewer's prompt changes in the saved run, resuming an interrupted edit, and the --source-run flag."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import edit_config, run_training, tree_hashes

from ednerf_ns.cli_options import given_options
from ednerf_ns.errors import UserError


def test_command_line_spellings_are_read_as_field_paths():
    argv = [
        "ed-nerf-edit",
        "--data", "scene/",
        "--prompt=a blue sphere",
        "--pipeline.model.num-levels", "16",
        "--pipeline.datamanager.max_image_size", "512",
        "colmap",
        "--downscale-factor", "2",
        "--load-3D-points", "False",
    ]  # fmt: skip
    assert given_options(argv) == {
        "pipeline.datamanager.data",
        "pipeline.model.prompt",
        "pipeline.model.num_levels",
        "pipeline.datamanager.max_image_size",
        "pipeline.datamanager.dataparser",
        "pipeline.datamanager.dataparser.downscale_factor",
        "pipeline.datamanager.dataparser.load_3D_points",
    }


def ns_train(args: list[str], monkeypatch) -> Path:
    """`ns-train <args>` in this process: nerfstudio's own tyro parsing and main(); returns the run folder."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.scripts.train import main

    from ednerf_ns.tools.runs import reset_nerfstudio_writers

    monkeypatch.setattr(sys, "argv", ["ns-train", *args])
    # an ns-train process ends itself after the final save; this one is pytest, whose work goes on
    config = tyro.cli(AnnotatedBaseConfigUnion, args=[args[0], "--exit-after-save", "False", *args[1:]])
    reset_nerfstudio_writers()
    try:
        main(config)
    finally:
        reset_nerfstudio_writers()
    return config.get_base_dir()


def test_command_line_wins_over_the_source_run_even_at_the_default(
    trained_run, scene, cache_dir, tmp_path, monkeypatch
):
    # A source run that set the options otherwise: downscale factor 2, an anneal length of 200 (the preset's).
    source = Path(shutil.copytree(trained_run, tmp_path / "source"))
    text = (source / "config.yml").read_text()
    assert "downscale_factor: null" in text and "proposal_weights_anneal_max_num_iters: 200" in text
    (source / "config.yml").write_text(text.replace("downscale_factor: null", "downscale_factor: 2"))
    before = tree_hashes(source)
    args = [
        "ed-nerf-edit",
        "--source-run", str(source),
        "--data", str(scene),
        "--prompt", "a blue sphere",
        "--pipeline.model.source-prompt", "a red sphere",
        "--machine.device-type", "cpu",
        "--vis", "tensorboard",
        "--max-num-iterations", "1",
        "--output-dir", str(tmp_path / "out"),
        "--pipeline.datamanager.cache-dir", str(cache_dir),
        "--pipeline.model.proposal-weights-anneal-max-num-iters", "1000",  # the default, typed by the user
        "nerfstudio-data",
        "--downscale-factor", "1",  # with the source's 2, the dataparser would look for images_2/ and fail
    ]  # fmt: skip
    run = ns_train(args, monkeypatch)
    config = yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.pipeline.datamanager.dataparser.downscale_factor == 1
    assert config.pipeline.model.proposal_weights_anneal_max_num_iters == 1000
    assert config.pipeline.model.num_levels == 8  # not typed: the source run's architecture (the default is 16)
    assert Path(config.pipeline.source_checkpoint).parent == source / "nerfstudio_models"
    assert tree_hashes(source) == before


def test_source_run_flag(trained_run, scene, cache_dir, tmp_path):
    for given in (trained_run, trained_run / "config.yml", trained_run / "nerfstudio_models"):
        config = edit_config(trained_run, scene, tmp_path, cache_dir, steps=1)
        config.load_dir, config.source_run = None, given
        config.validate()
        assert config.load_dir == trained_run / "nerfstudio_models"
    config = edit_config(trained_run, scene, tmp_path, cache_dir, steps=1)
    config.source_run = tmp_path
    with pytest.raises(UserError, match="--source-run .* and --load-dir .* name different runs"):
        config.validate()
    config.load_dir, config.source_run = None, tmp_path / "nowhere"
    with pytest.raises(UserError, match="--source-run .*nowhere' is not an ed-nerf run"):
        config.validate()
    config.load_dir = config.source_run = None
    with pytest.raises(UserError, match="pass --source-run"):
        config.validate()


def test_viewer_prompt_changes_are_saved_with_the_run(trained_run, scene, cache_dir, tmp_path):
    from ednerf_ns.tools.evaluate import resolve_prompts
    from ednerf_ns.trainer import EdNerfEditTrainer

    config = edit_config(trained_run, scene, tmp_path, cache_dir, steps=2)
    config.set_timestamp()
    trainer = EdNerfEditTrainer(config)
    trainer.setup()
    pipeline = trainer.pipeline
    trainer.train_iteration(0)
    pipeline.target_prompt_text.value = "a green sphere"
    pipeline.target_prompt_text.cb_hook(pipeline.target_prompt_text)
    pipeline.guidance_scale_slider.value = 12.0
    pipeline.guidance_scale_slider.cb_hook(pipeline.guidance_scale_slider)
    trainer.train_iteration(1)
    trainer.save_checkpoint(1)
    saved = yaml.load((config.get_base_dir() / "config.yml").read_text(), Loader=yaml.Loader)
    assert saved.pipeline.model.prompt == "a green sphere" and saved.pipeline.model.guidance_scale == 12.0
    assert saved.pipeline.viewer_changes == ["step 0: prompt = 'a green sphere'", "step 0: guidance_scale = 12.0"]
    assert resolve_prompts(saved, None, None)[:2] == ("a red sphere", "a green sphere")  # what ednerf-eval scores


def test_an_interrupted_edit_resumes(trained_run, scene, cache_dir, tmp_path):
    first = edit_config(trained_run, scene, tmp_path / "a", cache_dir, steps=3, guidance_scale=9.0)
    first.steps_per_save = 2
    interrupted = run_training(first)  # saved at step 2 (and, being the end, it stopped there)
    ckpts = sorted((interrupted / "nerfstudio_models").glob("step-*.ckpt"))
    last = ckpts[-1]
    # Continue it: no prompt, no source given again; a longer run this time.
    resume = edit_config(trained_run, None, tmp_path / "b", cache_dir, steps=5, prompt=None)
    resume.load_dir, resume.resume = None, interrupted
    steps = []
    from ednerf_ns.tools.runs import train_in_process
    from ednerf_ns.trainer import EdNerfEditTrainer

    loaded = {}
    original = EdNerfEditTrainer._load_checkpoint

    def spy(self):
        original(self)
        loaded["start"] = self._start_step
        loaded["state"] = {k: v.clone() for k, v in self.pipeline.state_dict().items()}
        loaded["adam"] = self.optimizers.optimizers["fields"].state_dict()["state"]

    EdNerfEditTrainer._load_checkpoint = spy
    try:
        resumed = train_in_process(resume, lambda step: steps.append(step))
    finally:
        EdNerfEditTrainer._load_checkpoint = original
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert loaded["start"] == state["step"] + 1 and steps[0] == state["step"] + 1 and steps[-1] == 4
    assert all(torch.equal(loaded["state"][k].cpu(), v) for k, v in state["pipeline"].items())
    assert loaded["adam"]  # the optimizer's moments came back too
    config = yaml.load((resumed / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.pipeline.model.prompt == "a blue sphere" and config.pipeline.model.guidance_scale == 9.0
    assert config.max_num_iterations == 5 and (resumed / "nerfstudio_models" / "step-000000004.ckpt").is_file()
    assert config.load_checkpoint == last and config.pipeline.source_checkpoint == first.pipeline.source_checkpoint
    with pytest.raises(UserError, match="not an ed-nerf-edit run"):
        bad = edit_config(trained_run, None, tmp_path / "c", cache_dir, steps=1)
        bad.resume = trained_run
        bad.validate()


def test_only_an_ns_train_process_ends_itself(monkeypatch):
    """exit_after_save ends the process after the final save only in an `ns-train` process, never inside another
    program (tests, ednerf-demo, ednerf-edit, the benchmarks), whose work goes on after the run."""
    import sys

    from ednerf_ns import trainer

    monkeypatch.setattr(sys, "argv", ["/venv/bin/ns-train", "ed-nerf-edit"])
    assert trainer.started_by_ns_train()
    monkeypatch.setattr(sys, "argv", ["/venv/bin/ednerf-demo"])
    assert not trainer.started_by_ns_train()
