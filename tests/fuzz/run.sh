#!/usr/bin/env bash
# Run fuzz targets one after the other for FUZZ_SECONDS each (make fuzz, make fuzz-asan).
#
#   bash tests/fuzz/run.sh PYTHON OUTDIR TARGET...
#
# Each target's new inputs go to OUTDIR/<target>/corpus (the seeds in
# tests/fuzz/corpus/<target> are read, never written), its log to
# OUTDIR/<target>/log and a crash reproducer to OUTDIR/<target>/crash-*
# (replay it: PYTHON tests/fuzz/fuzz_<target>.py OUTDIR/<target>/crash-...).
# FUZZ_ASAN_EXT=<dir>: load the extension built with AddressSanitizer from <dir>
# under atheris' ASan runtime. Exit status 1 if any target found something.
set -uo pipefail
python=$1
out=$2
shift 2
seconds=${FUZZ_SECONDS:-60}
here=$(cd "$(dirname "$0")" && pwd)
failed=()
for target in "$@"; do
  dir="$out/$target"
  mkdir -p "$dir/corpus"
  rm -f "$dir"/crash-* "$dir"/leak-* "$dir"/oom-* "$dir"/timeout-*
  echo "== fuzz_$target: ${seconds} s${FUZZ_ASAN_EXT:+ (AddressSanitizer)}"
  env=()
  if [ -n "${FUZZ_ASAN_EXT:-}" ]; then
    runtime="$("$python" -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so"
    # detect_odr_violation: gcc registers Cython's file-static globals twice (a false report);
    # a small quarantine and no RSS bound: ASan's own memory is not what is checked here;
    # PYTHONMALLOC=malloc: Python's objects (the packets' bytes) get redzones too
    env=(LD_PRELOAD="$runtime" FUZZ_EXT_DIR="$FUZZ_ASAN_EXT" FUZZ_RSS_SLACK_MB=4096 PYTHONMALLOC=malloc
         ASAN_OPTIONS="detect_leaks=0:detect_odr_violation=0:quarantine_size_mb=32:allocator_may_return_null=1")
  fi
  env "${env[@]}" "$python" "$here/fuzz_$target.py" -max_total_time="$seconds" -max_len=16384 \
    -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 -artifact_prefix="$dir/" \
    "$dir/corpus" "$here/corpus/$target" >"$dir/log" 2>&1
  status=$?
  grep -E "^Done [0-9]+ runs" "$dir/log"
  if [ $status -ne 0 ]; then
    failed+=("$target")
    echo "!! fuzz_$target failed (exit $status); the end of $dir/log:"
    grep -v -E "^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)|^INFO: Instrumenting" "$dir/log" | tail -40
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzzing found something in: ${failed[*]} (reproducers in $out/<target>/)"
  exit 1
fi
echo "fuzzing found nothing in: $*"
