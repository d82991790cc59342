"""seqtune: fine-tune sequence-to-sequence models from the command line.

One shared core (arguments, data, modeling, generation, metrics, checkpoints, outputs)
and thin entry points: the recipes in `seqtune.recipes` (the Trainer one and the
Accelerate one), each a `main` that reads top to bottom.
"""

__version__ = "0.1.0"

import logging as _logging


class _CpuAcceleratorNote(_logging.Filter):
    """DeepSpeed, once installed (for --deepspeed), warns in every process of every run on a machine
    without GPUs that it "set the accelerator to CPU", DeepSpeed used or not: a line that says nothing."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


# At import, before transformers loads DeepSpeed (its logger is "DeepSpeed", looked up by name).
_logging.getLogger("DeepSpeed").addFilter(_CpuAcceleratorNote())
