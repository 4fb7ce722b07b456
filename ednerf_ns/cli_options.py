"""Which options the user gave on the `ns-train` command line.

tyro hands nerfstudio a finished config: a value typed on the command line and a default look the same, so an edit
that merges its options with the source run's config.yml cannot tell "the user asked for 16 levels" from "16 is
the default". The command line itself can: this module reads it (tyro's spellings, nerfstudio's aliases and the
dataparser subcommand's bare flags) into dotted field paths such as `pipeline.model.num_levels`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

DATAPARSER = "pipeline.datamanager.dataparser"
"""Path of the dataparser config; present in the result when a dataparser subcommand (e.g. `colmap`) was given."""

# ns-train's aliases (nerfstudio.scripts.train.main copies them into the pipeline)
_ALIASES = {"data": "pipeline.datamanager.data", "prompt": "pipeline.model.prompt"}


def given_options(argv: Sequence[str]) -> set[str]:
    """Dotted paths of the config fields set by `argv` (the arguments after the program name)."""
    from nerfstudio.configs.dataparser_configs import all_dataparsers

    given: set[str] = set()
    in_dataparser = False
    for arg in argv:
        if not arg.startswith("--"):
            if arg in all_dataparsers:  # the dataparser subcommand: its flags follow without a prefix
                in_dataparser = True
                given.add(DATAPARSER)
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        if in_dataparser and "." not in name:
            name = f"{DATAPARSER}.{name}"
        given.add(_ALIASES.get(name, name))
    return given


_ARGUMENTS: list[str] | None = None


def use_arguments(argv: Sequence[str]) -> None:
    """Another command (ednerf-edit) parsed these ns-train options: they are this process's command line."""
    global _ARGUMENTS
    _ARGUMENTS = list(argv)


def command_line_options() -> set[str] | None:
    """The options given to this `ns-train` process, or None when it was not started from ns-train's command line
    (a Python caller built the config: then only a value different from the default counts as set)."""
    if _ARGUMENTS is not None:
        return given_options(_ARGUMENTS)
    program = Path(sys.argv[0])
    if program.name != "ns-train" and program.parts[-3:] != ("nerfstudio", "scripts", "train.py"):
        return None
    return given_options(sys.argv[1:])
