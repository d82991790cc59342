"""seqtune: fine-tune sequence-to-sequence models from the command line.

One shared core (arguments, data, modeling, metrics, checkpoints, outputs) and thin
entry points: the Trainer recipe (`train_trainer`) and the Accelerate recipe
(`train_loop`).
"""

__version__ = "0.1.0"
