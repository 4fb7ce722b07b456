"""`ednerf-edit`: several prompts, one process.

`ns-train ed-nerf-edit` edits one prompt per process, and each process pays again for nerfstudio's imports,
Stable Diffusion, the dataset, its latents and the source run. This command edits one source run once per prompt
in a single process: the imports and Stable Diffusion (shared within a process) load once, the latents come from
the cache the first edit wrote, and each prompt still writes a complete `ed-nerf-edit` run of its own -
config.yml, checkpoint, events - that `ns-viewer`, `ns-render`, `ns-eval` and `ednerf-eval` read like any other,
named after its prompt. A side-by-side sheet of held-out views (the source, then every prompt) ends it.

    ednerf-edit --source-run outputs/scene/ed-nerf/<timestamp> --pipeline.model.source-prompt "a red sphere" \\
        --prompts "a blue sphere" "a green sphere" "a golden sphere"

Every `ns-train ed-nerf-edit` option works here too, and applies to every prompt.
"""

from __future__ import annotations

import copy
import datetime
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ednerf_ns.errors import ArgumentError, one_line_errors, set_command

USAGE = (
    'ednerf-edit --source-run <ed-nerf run> --prompts "first prompt" "second prompt" ... '
    "[--sheet-views N] [any ns-train ed-nerf-edit option]"
)
OWN_FLAGS = ("--prompts", "--sheet-views")


def split_arguments(argv: Sequence[str]) -> tuple[list[str], int, list[str]]:
    """(the prompts, the sheet's view count, the ns-train ed-nerf-edit options) from this command's arguments."""
    prompts: list[str] = []
    views = 3
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--prompts":
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                prompts.append(args[i])
                i += 1
            continue
        if arg.startswith("--sheet-views"):
            value = arg.partition("=")[2] or (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if "=" in arg else 2
            if not value.isdigit():
                raise ArgumentError(f"--sheet-views takes a whole number of views, not '{value}'")
            views = int(value)
            continue
        if arg == "--prompt" or arg.startswith("--prompt="):
            raise ArgumentError("ednerf-edit takes --prompts (one or more); for a single prompt --prompts works too")
        rest.append(arg)
        i += 1
    if not prompts and not any(a in ("-h", "--help") for a in rest):
        raise ArgumentError(f"no --prompts given; usage: {USAGE}")
    for prompt in prompts:
        if not prompt.strip():
            raise ArgumentError('one of the --prompts is empty; give each edit its own "what the scene should show"')
    return prompts, views, rest


def run_name(prompt: str, used: set[str]) -> str:
    """A folder-safe name for a prompt's run, unique within this command ('a golden sphere' -> 'a-golden-sphere')."""
    base = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "prompt"
    name, n = base, 2
    while name in used:
        name, n = f"{base}-{n}", n + 1
    used.add(name)
    return name


def edit_one(config) -> Path:
    """One complete ed-nerf-edit run, as ns-train runs it (config.yml, build, train, final save)."""
    from ednerf_ns.tools.runs import reset_nerfstudio_writers, start_run

    start_run(config)
    trainer = config.setup(local_rank=0, world_size=1)
    try:
        trainer.setup()
        trainer.train()
    finally:
        viewer = getattr(trainer, "viewer_state", None)
        server = getattr(viewer, "viser_server", None)
        if server is not None:
            server.stop()  # the next prompt's viewer takes the port
        reset_nerfstudio_writers()
    return config.get_base_dir()


def side_by_side(source: Path, runs: list[Path], prompts: list[str], views: int, path: Path) -> Path:
    """Held-out views (rows) of the source run and of every edit (columns), labelled with the prompts."""
    from ednerf_ns.tools.runs import labelled_contact_sheet, load_run, render_split

    columns = []
    for run in [source, *runs]:
        pipeline = load_run(run / "config.yml")
        columns.append([v.rgb for v in render_split(pipeline, "eval", limit=views)])
        del pipeline
    rows = [list(row) for row in zip(*columns, strict=True)]
    return labelled_contact_sheet(rows, ["source", *prompts], path)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    import tyro

    from ednerf_ns import cli_options
    from ednerf_ns.configs import ed_nerf_edit_trainer
    from ednerf_ns.trainer import EdNerfEditTrainerConfig, end_process_now

    args = sys.argv[1:] if argv is None else list(argv)
    prompts, views, rest = split_arguments(args)
    base = tyro.cli(EdNerfEditTrainerConfig, default=ed_nerf_edit_trainer(), args=rest, prog="ednerf-edit")
    cli_options.use_arguments(rest)  # options typed here win over the source run, as with ns-train
    base.viewer.quit_on_train_completion = True  # the next prompt starts when this one is saved
    base.exit_after_save = False
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    used: set[str] = set()
    runs = []
    if base.data is not None:  # ns-train's --data alias
        base.pipeline.datamanager.data = base.data
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    used: set[str] = set()
    runs, source = [], None
    for prompt in prompts:
        config = copy.deepcopy(base)
        config.pipeline.model.prompt = prompt
        config.timestamp = f"{stamp}_{run_name(prompt, used)}"
        runs.append(edit_one(config))
        source = Path(config.pipeline.source_config).parent  # filled in by the edit from the source run
        print(f"ednerf-edit: '{prompt}' -> {runs[-1]}", flush=True)
    assert source is not None
    sheet = side_by_side(source, runs, prompts, views, runs[0].parent / f"{stamp}_prompts.png")
    print(f"ednerf-edit: {len(runs)} edits; side by side: {sheet}", flush=True)
    if argv is None:
        end_process_now(base.logging)  # everything is written: skip the interpreter's slow teardown
    return runs


def entrypoint() -> None:
    set_command("ednerf-edit")
    with one_line_errors():
        main()


if __name__ == "__main__":
    entrypoint()
