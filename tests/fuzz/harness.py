"""What every fuzz target in tests/fuzz shares: the runner, the growth check and
the error-log check.

A target is a script::

    from harness import fuzz_imports, run
    with fuzz_imports():
        from sfu import rtcp            # instrumented for coverage when atheris is there

    def one_input(data: bytes) -> None:
        try:
            rtcp.parse_compound(data)
        except ValueError:              # the parser's own error: fine
            pass                        # anything else propagates: a finding

    if __name__ == "__main__":
        run(one_input)

and runs as ``python tests/fuzz/fuzz_rtcp.py [libFuzzer flags] [corpus dirs]``
(``-max_total_time=60``, ``-runs=N``, ``-artifact_prefix=...``; libFuzzer adds
new inputs to the first corpus directory only, so ``make fuzz`` puts a scratch
directory first and the seeds of tests/fuzz/corpus/<target> second).

With atheris (the ``test`` extra) the run is coverage-guided by libFuzzer.
Without it, a plain mutation loop over the seeds takes the same flags
(``-runs``, ``-max_total_time``, ``-seed``): a smoke, not a fuzzer.

The property checked around every input, beside what the target asserts:

- no exception escapes but the parser's own error (the target catches that);
- nothing is logged at ERROR by the ``sfu`` loggers (the engine's and the
  signalling's catch-alls log there: a bug they swallowed is still a bug);
- no growth: every ``CHECK_EVERY`` inputs, after a warm-up, the number of
  Python objects the garbage collector tracks and the RSS must stay within
  ``FUZZ_OBJECTS_SLACK`` objects / ``FUZZ_RSS_SLACK_MB`` MiB of what they
  were after the warm-up, and the target's own ``bounded()`` (its tables)
  must hold.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests.*, bench.* when run as a script
    sys.path.insert(0, str(ROOT))

EXT_DIR = os.environ.get("FUZZ_EXT_DIR")
if EXT_DIR:  # another build of the extension (make fuzz-asan): its sfu/_fast/*.so before the in-place ones
    import sfu._fast

    sfu._fast.__path__.insert(0, os.path.join(os.path.abspath(EXT_DIR), "sfu", "_fast"))

try:
    import atheris
except ImportError:  # the fallback loop below
    atheris = None

CHECK_EVERY = int(os.environ.get("FUZZ_CHECK_EVERY", "2000"))
WARMUP_CHECKS = 2  # baseline taken at the 2nd check: caches and the corpus are warm by then
OBJECTS_SLACK = int(os.environ.get("FUZZ_OBJECTS_SLACK", "20000"))
RSS_SLACK_MB = float(os.environ.get("FUZZ_RSS_SLACK_MB", "96"))


@contextlib.contextmanager
def fuzz_imports() -> Iterator[None]:
    """Import the code under test inside this block: atheris instruments it (the
    ``sfu`` package and the parsers it delegates to)."""
    if atheris is None:
        yield
        return
    with atheris.instrument_imports(include=["sfu", "aioice"]):
        yield


class _ErrorLog(logging.Handler):
    """Collects ERROR records of the sfu loggers (the engine's catch-alls log there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _quiet_logs() -> _ErrorLog:
    collector = _ErrorLog()
    sfu_logger = logging.getLogger("sfu")
    sfu_logger.setLevel(logging.ERROR)
    sfu_logger.propagate = False
    sfu_logger.handlers[:] = [collector]
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    return collector


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class GrowthError(AssertionError):
    pass


def _wrap(one_input: Callable[[bytes], None], bounded: Callable[[], None] | None) -> Callable[[bytes], None]:
    errors = _quiet_logs()
    state = {"n": 0, "checks": 0, "objects": None, "rss": None}

    def check_growth() -> None:
        state["checks"] += 1
        if bounded is not None:
            bounded()
        gc.collect()
        objects, rss = len(gc.get_objects()), rss_mb()
        if state["checks"] == WARMUP_CHECKS:
            state["objects"], state["rss"] = objects, rss
        elif state["checks"] > WARMUP_CHECKS:
            if objects > state["objects"] + OBJECTS_SLACK:
                raise GrowthError(f"tracked Python objects grew from {state['objects']} to {objects} "
                                  f"after {state['n']} inputs")
            if rss > state["rss"] + RSS_SLACK_MB:
                raise GrowthError(f"RSS grew from {state['rss']:.0f} MiB to {rss:.0f} MiB "
                                  f"after {state['n']} inputs")

    def wrapped(data: bytes) -> None:
        one_input(data)
        if errors.records:
            record = errors.records[0]
            errors.records.clear()
            detail = logging.Formatter().format(record)
            raise AssertionError(f"the sfu logged an error for this input:\n{detail}")
        state["n"] += 1
        if state["n"] % CHECK_EVERY == 0:
            check_growth()

    return wrapped


def run(one_input: Callable[[bytes], None], *, bounded: Callable[[], None] | None = None,
        custom_mutator: Callable[[bytes, int, int], bytes] | None = None) -> None:
    """Fuzz ``one_input`` with the libFuzzer flags and corpus directories of sys.argv."""
    target = _wrap(one_input, bounded)
    if atheris is not None:
        kwargs = {"custom_mutator": custom_mutator} if custom_mutator is not None else {}
        atheris.Setup(sys.argv, target, **kwargs)
        atheris.Fuzz()
        return
    _fallback(target, sys.argv[1:], custom_mutator)


# -- without atheris ---------------------------------------------------------------------------


def _fallback(target: Callable[[bytes], None], argv: list[str],
              custom_mutator: Callable[[bytes, int, int], bytes] | None) -> None:
    flags = {}
    paths = []
    for arg in argv:
        if arg.startswith("-") and "=" in arg:
            key, value = arg[1:].split("=", 1)
            flags[key] = value
        else:
            paths.append(Path(arg))
    runs = int(flags.get("runs", "-1"))
    max_total_time = float(flags.get("max_total_time", "0"))
    deadline = time.monotonic() + max_total_time if max_total_time > 0 else float("inf")
    max_len = int(flags.get("max_len", "4096"))
    rng = random.Random(int(flags.get("seed", "0")) or None)
    seeds: list[bytes] = []
    paths = [p for p in paths if p.exists()]
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        seeds += [p.read_bytes() for p in files]
    if paths and all(p.is_file() for p in paths):  # reproduce: run the given inputs once
        for seed in seeds:
            target(seed)
        print(f"ran {len(seeds)} inputs", file=sys.stderr)
        return
    seeds = seeds or [b""]
    done = 0
    for seed in seeds:
        target(seed)
        done += 1
    while (runs < 0 or done < runs) and time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(seeds), rng.choice(seeds), max_len)
        if custom_mutator is not None and rng.random() < 0.5:
            data = custom_mutator(data, max_len, rng.getrandbits(32))
        try:
            target(data)
        except BaseException:
            sys.stderr.write(f"==fallback== failing input ({len(data)} bytes): {data[:512].hex()}\n")
            raise
        done += 1
    print(f"fallback fuzzer (atheris not installed): {done} inputs, no finding", file=sys.stderr)


def _mutate(rng: random.Random, data: bytes, other: bytes, max_len: int) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # insert bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:  # delete a run
            del buf[pos:pos + rng.randint(1, 16)]
        elif op == 4 and other:  # splice from another seed
            start = rng.randrange(len(other))
            buf[pos:pos] = other[start:start + rng.randint(1, 64)]
        elif op == 5 and buf:  # interesting values
            i = rng.randrange(len(buf))
            buf[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif op == 6:  # truncate
            del buf[pos:]
    return bytes(buf[:max_len])


def mutate(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """libFuzzer's own mutation of ``data`` (atheris.Mutate), or the fallback's."""
    if atheris is not None:
        return atheris.Mutate(data, max_size)
    return _mutate(rng, data, data, max_size)


def line_mutator(dictionary: list[bytes]) -> Callable[[bytes, int, int], bytes]:
    """A custom mutator for line-based text (SDP): half the time libFuzzer's byte
    mutations, else a whole-line edit -- delete, duplicate, swap, replace one line by
    a line of ``dictionary`` (lines of real offers) or mutate one line's bytes."""

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return mutate(data, max_size, rng)
        lines = data.split(b"\r\n")
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(lines))
            op = rng.randrange(5)
            if op == 0 and len(lines) > 1:
                del lines[i]
            elif op == 1:
                lines.insert(i, lines[i])
            elif op == 2:
                j = rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
            elif op == 3 and dictionary:
                lines.insert(i, rng.choice(dictionary))
            else:
                lines[i] = mutate(lines[i], len(lines[i]) + 32, rng)
        return b"\r\n".join(lines)[:max_size]

    return mutator
