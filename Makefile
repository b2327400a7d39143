# Two entry points for a fresh machine: `make quickstart` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= quickstart_out
ARGS   ?=
# e.g. make quickstart ARGS=--overwrite (replace an earlier run in OUT) or ARGS=--resume (continue it)

.PHONY: quickstart test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and exactly pinned, so the resolver never swaps in a different (e.g. multi-GB CUDA) build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

quickstart: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/qoqmed quickstart --out $(OUT) $(ARGS)

test: $(VENV)/.installed-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
