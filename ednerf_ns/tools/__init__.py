"""Commands on finished runs - `ednerf-eval`, `ednerf-compare`, before/after orbit videos - and the run helpers that
they, the demo and the benchmarks share (train in-process, load a run, render its views).

May import: everything below it (errors, ops, accel, models2d, the nerfstudio glue at the package's top level).
Never ednerf_ns.demo or ednerf_ns.bench.
"""
