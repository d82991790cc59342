"""seqtune.runtime: rank and world size before torch.distributed is initialised, no-op barriers in one
process, and the log levels setup_logging gives each rank."""

from __future__ import annotations

import logging

import pytest
import torch.distributed as dist

from seqtune.runtime import barrier, close_process_group, is_main_process, process_rank, setup_logging, world_size

LOGGERS = ("", "seqtune", "transformers", "datasets", "accelerate")


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """No process group, and no launcher variables from the environment the tests run in."""
    assert not (dist.is_available() and dist.is_initialized())
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture()
def restore_logging():
    """setup_logging changes process-wide logging state: put it back for the other tests."""
    saved = {
        name: (logger.level, list(logger.handlers), logger.propagate)
        for name, logger in ((name, logging.getLogger(name)) for name in LOGGERS)
    }
    yield
    for name, (level, handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def test_defaults_without_launcher():
    assert process_rank() == 0
    assert world_size() == 1
    assert is_main_process()


@pytest.mark.parametrize("rank, size, main", [("0", "4", True), ("1", "2", False), ("3", "4", False)])
def test_rank_and_world_size_from_environment(monkeypatch, rank, size, main):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", size)
    assert process_rank() == int(rank)
    assert world_size() == int(size)
    assert is_main_process() is main


def test_barrier_and_close_are_no_ops_in_one_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # even a launcher's variables do not make them wait or connect
    assert barrier() is None
    assert close_process_group() is None
    close_process_group()  # twice is fine too
    assert not dist.is_initialized()


def test_setup_logging_rank_zero_is_info(restore_logging):
    setup_logging()
    assert logging.getLogger("seqtune").level == logging.INFO
    assert logging.getLogger("seqtune.modeling").getEffectiveLevel() == logging.INFO
    # "passive": the libraries stay at WARNING.
    assert logging.getLogger("transformers").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("accelerate").level == logging.WARNING


def test_setup_logging_other_ranks_only_warn(monkeypatch, restore_logging):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    setup_logging("debug")  # even an explicit level does not make rank 1 chatty
    assert logging.getLogger("seqtune").level == logging.WARNING
    assert logging.getLogger("accelerate").level == logging.WARNING


@pytest.mark.parametrize(
    "flag, expected", [("debug", logging.DEBUG), ("error", logging.ERROR), ("bogus", logging.INFO)]
)
def test_setup_logging_explicit_level_on_rank_zero(restore_logging, flag, expected):
    setup_logging(flag)
    assert logging.getLogger("seqtune").level == expected
    assert logging.getLogger("transformers").getEffectiveLevel() == expected  # explicit: libraries follow it
