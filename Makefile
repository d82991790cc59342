# seqtune: `make demo` runs the embedded default end to end, `make test` runs the suite.
# Both create .venv when it is missing and install the pinned requirements first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install demo test clean

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
	$(PY) -m pytest -n 2 --timeout 900 tests

clean:
	rm -rf outputs .pytest_cache
