"""Thread setup shared by the side-by-side benchmarks; import it before jax and torch.

`--threads N` must act before jax / torch start their thread pools, so it is read from
sys.argv here (the scripts' argparse still declares it) and turned into XLA_FLAGS.
"""

import os
import sys


def threads_from_argv(argv) -> int:
    """The value of --threads N / --threads=N in argv, 0 when absent."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 0


def pin_xla_threads(argv=None) -> int:
    """Sets XLA_FLAGS for --threads N (single-threaded Eigen, N intra-op threads); returns N."""
    n = threads_from_argv(sys.argv[1:] if argv is None else argv)
    if n:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   f"intra_op_parallelism_threads={n}").strip()
    return n
