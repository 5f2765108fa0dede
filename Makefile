# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DCPIPE := $(VENV)/bin/dcpipe

# pillow-simd builds from source; `-C x=enable` makes the build fail rather than leave out a
# codec whose headers are missing (WebP, TIFF, JPEG 2000: images of the web)
SIMD_CODECS := -C webp=enable -C tiff=enable -C jpeg2000=enable
CODEC_HEADERS := libjpeg-dev zlib1g-dev libwebp-dev libtiff-dev libopenjp2-7-dev
define NO_SIMD
make setup: pillow-simd could not be built with WebP, TIFF and JPEG 2000 (log: $(VENV)/pillow-simd-build.log).
Installing Pillow instead: the same API and every codec, 1.3x slower to shard. For pillow-simd,
install the codec headers (as root: apt-get install $(CODEC_HEADERS)), then: rm $(VENV)/.installed && make setup
endef
export NO_SIMD

.PHONY: setup demo test test-slow bench

# The Makefile is a prerequisite too: an existing venv is redone when how to make it changes.
$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	# torch first, pinned: the CPU machines here carry these wheels on disk
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	# pillow-simd in place of Pillow: 1.3x faster decode+resize+encode here (docs/shard.md);
	# --no-cache-dir: a wheel cached from an earlier build may lack the codecs
	$(PY) -m pip uninstall -qq -y pillow pillow-simd
	$(PY) -m pip install --no-cache-dir pillow-simd $(SIMD_CODECS) > $(VENV)/pillow-simd-build.log 2>&1 \
	  || { echo "$$NO_SIMD" >&2; $(PY) -m pip install -q pillow; }
	$(PY) -m dcpipe.stages.shard.decoders
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(DCPIPE) -w demo demo --rounds 6

test: setup
	$(PY) -m pytest -q

# longer checks (`@pytest.mark.slow`; ~10 min); exit 5 = none selected: not a failure
test-slow: setup
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done
