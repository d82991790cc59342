# seqtune: `make demo` runs the embedded default end to end, `make test` runs the suite.
# Both create .venv when it is missing and install the pinned requirements first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install demo test lint format test-xla test-tf bench bench-tf bench-streaming bench-sharding torture clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when a requirement file or the package metadata changed.
$(STAMP): $(PY) requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/seqtune demo --output_dir outputs/demo

test: $(STAMP)
	@./.ci/ensure_chromium || echo "warning: no chromium: the report's browser test will be skipped"
	$(PY) -m pytest -n 2 --timeout 900 --durations 15 tests

# ruff (pinned in requirements-dev.txt, configured in pyproject.toml): the tree must be formatted and lint-clean.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The PyTorch/XLA route lives in its own venv: torch_xla must match torch exactly (2.9.0), which
# cannot share .venv (torch 2.13.0). Its tests run on the CPU XLA device (PJRT_DEVICE=CPU).
XLA_VENV  := .venv-xla
XLA_PY    := $(XLA_VENV)/bin/python
XLA_STAMP := $(XLA_VENV)/.installed

$(XLA_PY):
	$(PYTHON) -m venv $(XLA_VENV)
	$(XLA_PY) -m pip install --quiet --upgrade pip

$(XLA_STAMP): $(XLA_PY) requirements-xla.txt pyproject.toml
	$(XLA_PY) -m pip install --quiet -r requirements-xla.txt
	$(XLA_PY) -m pip install --quiet --no-deps -e .
	touch $(XLA_STAMP)

test-xla: $(XLA_STAMP)
	PJRT_DEVICE=CPU $(XLA_PY) -m pytest -p no:cacheprovider --timeout 900 tests/xla

# The TensorFlow script lives in its own venv too: transformers 5 has no TensorFlow models, so .venv-tf holds
# TF 2.21 + tf-keras + transformers 4.57 (requirements-tf.txt). Its tests also use .venv (the PyTorch side of
# the model round trip, and the tiny models), hence the main install first.
TF_VENV  := .venv-tf
TF_PY    := $(TF_VENV)/bin/python
TF_STAMP := $(TF_VENV)/.installed

$(TF_PY):
	$(PYTHON) -m venv $(TF_VENV)
	$(TF_PY) -m pip install --quiet --upgrade pip

$(TF_STAMP): $(TF_PY) requirements-tf.txt pyproject.toml
	$(TF_PY) -m pip install --quiet -r requirements-tf.txt
	$(TF_PY) -m pip install --quiet --no-deps -e .
	touch $(TF_STAMP)

test-tf: $(STAMP) $(TF_STAMP)
	SEQTUNE_TORCH_PYTHON=$(abspath $(PY)) $(TF_PY) -m pytest -n 2 -p no:cacheprovider --timeout 900 tests/tf

# Speed and memory against the plain Seq2SeqTrainer pipeline (prints figures and ratios; minutes).
bench: $(STAMP)
	$(PY) benchmarks/bench_summarization.py $(BENCH_ARGS)

# The TensorFlow script beside the PyTorch scripts: training and evaluation samples/s on the same model and data.
bench-tf: $(STAMP) $(TF_STAMP)
	$(PY) benchmarks/bench_tensorflow.py --tf_python $(abspath $(TF_PY)) $(BENCH_ARGS)

bench-streaming: $(STAMP)
	$(PY) benchmarks/bench_streaming.py $(BENCH_ARGS)

# DeepSpeed ZeRO-2/3 against DDP on 2 processes: per-process peak memory and step time (minutes).
bench-sharding: $(STAMP)
	$(PY) benchmarks/bench_sharding.py $(BENCH_ARGS)

# Kill torture, long version: 20 SIGKILLs at random moments per script, resumed with the same
# command each time; final steps checked, final weights compared with an uninterrupted run (minutes).
TORTURE_KILLS ?= 20
torture: $(STAMP)
	$(PY) scripts/torture.py --kills $(TORTURE_KILLS) --same_weights --script examples/pytorch/summarization/run_summarization.py
	$(PY) scripts/torture.py --kills $(TORTURE_KILLS) --same_weights --script examples/pytorch/summarization/run_summarization_no_trainer.py

clean:
	rm -rf outputs .pytest_cache
