"""ednerf-bench e2e on the CPU (tiny mode, a few steps): real ns-train processes, timed from outside, with the
phases their runs record. It checks the plumbing, not the seconds."""

from __future__ import annotations

import shutil

import pytest

from ednerf_ns.bench import e2e


@pytest.mark.skipif(shutil.which("ns-train") is None, reason="needs the ns-train console script (pip install -e .)")
def test_train_and_edit_timed_phase_by_phase(tmp_path):
    cfg = e2e.EndToEndConfig(
        mode="tiny", workdir=tmp_path, output=tmp_path / "e2e.json", views=16, train_steps=4, edit_steps=2,
        vis="tensorboard", help=False, import_repeats=1, warmup=False,
    )  # fmt: skip
    report = e2e.main(cfg)
    assert report["import"]["with_plugin_s"] > 0 and report["import"]["nerfstudio_methods_s"] > 0
    # nerfstudio's plugin discovery imported the plugin on the "with" side only: it took longer there
    assert report["import"]["plugin_load_s"] > 0, report["import"]["discovery_samples_s"]
    for key, steps in (("train", 4), ("edit", 2)):
        run = report[key]
        phases = run["phases_s"]
        assert run["steps"] == steps
        # every phase is there (training's "source run and prompts" is the moment its pipeline is ready), in
        # order, and together they are the wall clock measured from outside
        assert list(phases) == [*(p for p, _ in e2e.timeline.PHASES), "exit"], phases
        assert all(v >= 0 for v in phases.values()), phases
        assert abs(sum(phases.values()) - run["wall_s"]) < 0.05
    # the edit loaded the UNet and the text encoder (in the background) before its first step ended
    events = report["edit"]["events_s"]
    assert events["loaded unet"] < events["first_step"] and events["loaded text_encoder"] < events["first_step"]
    assert (tmp_path / "e2e.json").is_file()


def test_a_failing_command_is_one_line(tmp_path, monkeypatch):
    from ednerf_ns.errors import UserError

    with pytest.raises(UserError, match="failed"):
        e2e.timed(["python3", "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "log", 60)
