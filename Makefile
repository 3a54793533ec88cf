# The two commands of the README: `make serve` and `make test`.
# Both create .venv when needed and install the package with its compiled
# Cython extension (sfu/_fast) before they run.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: serve test install system-deps bench clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools

$(STAMP): $(PY) pyproject.toml setup.py $(wildcard sfu/_fast/*.pyx sfu/_fast/*.pxd sfu/_fast/includes/*.pxd bench/*.pyx)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) setup.py --quiet build_ext --inplace
	$(PY) -c "import sfu._fast.packet, sfu._fast.datapath, bench.floor, bench.sink"
	touch $(STAMP)

install: $(STAMP)

# Programs the tests drive: Chromium and Firefox ESR (browser tests), iproute2 (loopback-only namespace).
system-deps:
	bash scripts/install-system-deps.sh

serve: install
	$(VENV)/bin/sfu serve --data-dir ./var --dev $(ARGS)

# Tests run inside a private network namespace that has only loopback, so real
# WebRTC clients cannot reach any other address.
test: install system-deps
	bash scripts/netns-run.sh $(PY) -m pytest $(PYTEST_ARGS)

# microbenchmarks (pytest-benchmark), then the load sweep with its report (bench/results/sweep.md)
bench: install
	$(PY) -m pip install --quiet -e ".[test,bench]"
	bash scripts/netns-run.sh $(PY) -m pytest bench --benchmark-enable $(PYTEST_ARGS)
	bash scripts/netns-run.sh $(PY) -m bench.sweep $(ARGS)

clean:
	rm -rf build sfu/_fast/*.so sfu/_fast/*.c bench/*.so bench/*.c *.egg-info
