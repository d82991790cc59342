"""The recipes: one file each, `main` reads top to bottom (set up, train, wrap up).

- `trainer`: transformers' Seq2SeqTrainer (examples/pytorch/summarization/run_summarization.py)
- `accelerate_loop`: an explicit PyTorch loop through Accelerate (run_summarization_no_trainer.py)
- `common`: the steps every recipe takes before and after its loop

A recipe never imports another recipe; everything they share lives in the core modules.
"""
