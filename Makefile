# The two commands of the README: `make serve` and `make test`.
# Both create .venv when needed and install the package with its compiled
# Cython extension (sfu/_fast) before they run.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: serve test install system-deps bench fuzz fuzz-asan clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools

$(STAMP): $(PY) pyproject.toml setup.py $(wildcard sfu/_fast/*.pyx sfu/_fast/*.pxi sfu/_fast/*.pxd sfu/_fast/includes/*.pxd bench/*.pyx)
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

# coverage-guided fuzzing (atheris, in the test extra): FUZZ_SECONDS per target, new
# inputs and crash reproducers under build/fuzz/<target>/ (tests/fuzz/README.md)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= stun dtls rtp rtcp sdp demux signaling datapath
fuzz: install
	$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install --quiet "atheris>=2.3"
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/fuzz/run.sh $(PY) build/fuzz $(FUZZ_TARGETS)

# the targets that run the Cython/C extension (packet.pyx, datapath.pyx) against a copy of it
# built with AddressSanitizer (gcc; run under atheris' ASan runtime), in build/asan
FUZZ_ASAN_TARGETS ?= rtp datapath
fuzz-asan: install
	$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install --quiet "atheris>=2.3"
	CC="gcc -fsanitize=address -fno-omit-frame-pointer -g" LDSHARED="gcc -shared" \
	  $(PY) setup.py --quiet build_ext --build-lib build/asan --build-temp build/asan-tmp
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_ASAN_EXT=build/asan bash tests/fuzz/run.sh $(PY) build/fuzz-asan $(FUZZ_ASAN_TARGETS)

clean:
	rm -rf build sfu/_fast/*.so sfu/_fast/*.c bench/*.so bench/*.c *.egg-info $(STAMP)
