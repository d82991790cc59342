#!/usr/bin/env python
"""Fine-tune a sequence-to-sequence model for summarization with transformers' Seq2SeqTrainer.

The recipe lives in seqtune (`seqtune.recipes.trainer`); this file keeps the path and the
flags of the Hugging Face example. Run with -h to list every flag.
"""

import os
import sys

try:
    import seqtune  # noqa: F401
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "src"))

from seqtune.recipes.trainer import _mp_fn, main  # noqa: E402,F401  (_mp_fn: for xla_spawn.py)

if __name__ == "__main__":
    main()
