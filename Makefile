# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DCPIPE := $(VENV)/bin/dcpipe

.PHONY: setup demo test test-slow bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: the CPU machines here carry these wheels on disk
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	# pillow-simd in place of Pillow: 1.3x faster decode+resize+encode here (docs/shard.md)
	$(PY) -m pip uninstall -q -y pillow
	$(PY) -m pip install -q pillow-simd
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(DCPIPE) -w demo demo --rounds 6

test: setup
	$(PY) -m pytest -q

# exit 5 = no test carries the slow mark (none does today): not a failure
test-slow: setup
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done
