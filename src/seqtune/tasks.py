"""What a text-to-text task is, as data: its scripts, flags, columns, metric and generation defaults.

The recipes, the data loading and the generation command are the same for every task; they
ask the run's task (found from its data arguments' class) for what differs. Adding a task is
one entry here: a DataArguments subclass for its flags, a Scorer for its metric, and the words
its messages use.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arguments import DataArguments, TranslationDataArguments
from .metrics import Scorer, SummaryScorer, TranslationScorer


@dataclass(frozen=True)
class Task:
    name: str  # also the key of the model config's task_specific_params entry
    trainer_script: str  # the Hugging Face script the Trainer recipe stands in for
    loop_script: str  # ... and the Accelerate recipe
    data_arguments: type[DataArguments]
    scorer: type[Scorer]
    column_flags: tuple[str, str]  # the flags naming the input and the target column
    column_words: tuple[str, str]  # how messages call them
    headline_metric: str  # the score logged each epoch and shown first
    prefix_example: str  # what T5-style models expect as --source_prefix
    command: str  # the `seqtune` command that uses a trained model
    plot: tuple[str, str, str]  # the report's plot of the scores per evaluation: file, title, axis label


SUMMARIZATION = Task(
    name="summarization",
    trainer_script="run_summarization.py",
    loop_script="run_summarization_no_trainer.py",
    data_arguments=DataArguments,
    scorer=SummaryScorer,
    column_flags=("text_column", "summary_column"),
    column_words=("text", "summary"),
    headline_metric="rouge1",
    prefix_example="summarize: ",
    command="summarize",
    plot=("plot_eval_rouge.png", "Evaluation ROUGE", "ROUGE (F1 x 100)"),
)

TRANSLATION = Task(
    name="translation",
    trainer_script="run_translation.py",
    loop_script="run_translation_no_trainer.py",
    data_arguments=TranslationDataArguments,
    scorer=TranslationScorer,
    column_flags=("source_column", "target_column"),
    column_words=("source", "target"),
    headline_metric="bleu",
    prefix_example="translate English to German: ",
    command="translate",
    plot=("plot_eval_bleu.png", "Evaluation BLEU and chrF", "score (x 100)"),
)

TASKS = {task.name: task for task in (SUMMARIZATION, TRANSLATION)}


def task_of(data_args: DataArguments) -> Task:
    """The task whose flags `data_args` holds (the most derived class wins)."""
    for task in sorted(TASKS.values(), key=lambda task: -len(task.data_arguments.__mro__)):
        if isinstance(data_args, task.data_arguments):
            return task
    return SUMMARIZATION
