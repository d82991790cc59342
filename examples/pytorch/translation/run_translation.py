#!/usr/bin/env python
"""Fine-tune a sequence-to-sequence model for translation with transformers' Seq2SeqTrainer.

The recipe is the summarization one (`seqtune.recipes.trainer`) run on the translation task
(`seqtune.tasks.TRANSLATION`: its flags, columns and metric); this file keeps the path and the
flags of the Hugging Face example. Run with -h to list every flag.
"""

import os
import sys

try:
    import seqtune  # noqa: F401
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "src"))

from seqtune.recipes.trainer import main as train  # noqa: E402
from seqtune.tasks import TRANSLATION  # noqa: E402


def main(argv=None):
    return train(argv, task=TRANSLATION)


def _mp_fn(index):
    """Entry point for xla_spawn.py (one call per TPU core)."""
    main()


if __name__ == "__main__":
    main()
