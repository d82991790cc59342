#!/usr/bin/env python
"""Fine-tune a sequence-to-sequence model for summarization with TensorFlow (Keras `fit`).

The recipe lives in seqtune (`seqtune.recipes.keras_fit`); this file keeps the path and the
flags of the Hugging Face TensorFlow example. It runs in the TensorFlow environment
(`make test-tf` builds .venv-tf from requirements-tf.txt). Run with -h to list every flag.
"""

import os
import sys

try:
    import seqtune  # noqa: F401
except ImportError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "src"))

from seqtune.recipes.keras_fit import main  # noqa: E402

if __name__ == "__main__":
    main()
