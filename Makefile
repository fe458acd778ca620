# Set-up, tests and the demo. `make test` and `make demo` install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow lint demo demo-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch and torchvision lie on this machine's disk; pin them so pip takes those files.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

# Slow end-to-end tests (the quick demo among them); .ci/run runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The demo: pretrain on rendered motion clips, then probe the trained encoder beside its baselines
# (report.json, table and plots in runs/demo). demo-quick: the same pipeline on tiny data, claims nothing.
demo: $(STAMP)
	$(BIN)/vjepa demo --out runs/demo

demo-quick: $(STAMP)
	$(BIN)/vjepa demo --mode quick --fresh --out runs/demo-quick

clean:
	rm -rf runs .pytest_cache
