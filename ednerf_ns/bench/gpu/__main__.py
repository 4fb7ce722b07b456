"""`python -m ednerf_ns.bench.gpu [options]`: the GPU benchmark (see ednerf_ns.bench.gpu)."""

import contextlib
import sys

from ednerf_ns.bench.gpu import main, parse_args

if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(parse_args(sys.argv[1:]))
