"""seqtune: fine-tune sequence-to-sequence models from the command line.

One shared core (arguments, data, modeling, generation, metrics, checkpoints, outputs)
and thin entry points: the recipes in `seqtune.recipes` (the Trainer one and the
Accelerate one), each a `main` that reads top to bottom.
"""

__version__ = "0.1.0"
