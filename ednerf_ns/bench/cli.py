"""`ednerf-bench {gpu,ablations,edits,e2e}`: one console command, one subcommand per measurement."""

from __future__ import annotations

from typing import Annotated, Union

import tyro


def entrypoint() -> None:
    from ednerf_ns.bench.ablations import AblationConfig
    from ednerf_ns.bench.ablations import main as ablations
    from ednerf_ns.bench.e2e import EndToEndConfig
    from ednerf_ns.bench.e2e import main as e2e
    from ednerf_ns.bench.edits import EditSuiteConfig
    from ednerf_ns.bench.edits import main as edits
    from ednerf_ns.bench.gpu import GpuBenchConfig
    from ednerf_ns.bench.gpu import main as gpu

    tyro.extras.set_accent_color("bright_yellow")
    commands = Union[  # noqa: UP007 - tyro reads subcommands from a typing.Union
        Annotated[GpuBenchConfig, tyro.conf.subcommand("gpu")],
        Annotated[AblationConfig, tyro.conf.subcommand("ablations")],
        Annotated[EditSuiteConfig, tyro.conf.subcommand("edits")],
        Annotated[EndToEndConfig, tyro.conf.subcommand("e2e")],
    ]
    config = tyro.cli(commands)  # type: ignore[arg-type]
    if isinstance(config, GpuBenchConfig):
        gpu(config)
    elif isinstance(config, EditSuiteConfig):
        edits(config)
    elif isinstance(config, EndToEndConfig):
        e2e(config)
    else:
        ablations(config)


if __name__ == "__main__":
    entrypoint()
