#!/usr/bin/env python
"""Launch a training script on TPU cores with PyTorch/XLA: one replica per core.

    python examples/pytorch/xla_spawn.py --num_cores 8 \\
        examples/pytorch/summarization/run_summarization.py --model_name_or_path ... --output_dir ...

The script is imported as a module, gets its own arguments (everything after its path)
in sys.argv, and its `_mp_fn(index)` runs on every replica through `xmp.spawn`. Both
summarization scripts have one. On the CPU XLA device (PJRT_DEVICE=CPU) only
--num_cores 1 runs. The launcher lives in seqtune (`seqtune.xla.spawn`).
"""

import argparse
import os
import sys

try:
    import seqtune  # noqa: F401
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))

from seqtune.errors import exit_on_user_error  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="xla_spawn.py",
        description="Run a training script on several TPU cores with PyTorch/XLA (one process per core).",
    )
    parser.add_argument("--num_cores", type=int, default=1, help="Number of TPU cores (replicas) to use (default: 1).")
    parser.add_argument(
        "training_script", help="The training script to launch, e.g. summarization/run_summarization.py."
    )
    parser.add_argument("training_script_args", nargs=argparse.REMAINDER, help="The training script's own arguments.")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> None:
    from seqtune.xla import spawn

    args = parse_args(argv)
    spawn(args.num_cores, args.training_script, args.training_script_args)


if __name__ == "__main__":
    main()
