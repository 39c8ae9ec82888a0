#!/usr/bin/env bash
# Fuzz every target (or the ones named) for a bounded time each, keeping what is found.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      default: 60 s for each of reference feature token filter
#
# Corpus: libFuzzer reads the committed seeds (fuzz/seeds/TARGET) and grows fuzz/corpus/TARGET (not committed), so
# every run starts where the last one stopped. Crashes land in fuzz/artifacts/TARGET/; logs and a summary in
# fuzz/logs/. Exit status: 1 when any target found a failing input. Not part of CI's test run.
#
# cargo-fuzz needs nightly-only flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -uo pipefail
cd "$(dirname "$0")"

SECS=${1:-${FUZZ_SECONDS:-60}}
shift $(( $# > 0 ? 1 : 0 ))
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(reference feature token filter)

bash ../tests/install.sh fuzz || exit 2 # cargo-fuzz and a C++ compiler for libFuzzer: the one list

export RUSTC_BOOTSTRAP=1
# the root workspace's CARGO_TARGET_DIR would mix sanitizer builds with the normal ones
unset CARGO_TARGET_DIR

mkdir -p logs
summary=logs/summary.txt
: > "$summary"
failed=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  args=(-max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$t/")
  case "$t" in
    filter) args+=(-max_len=16384 -dict=dict/json.dict) ;;
    token) args+=(-max_len=2048) ;;
    *) args+=(-max_len=512) ;;
  esac
  echo "== fuzz $t for ${SECS}s"
  # the build is bounded too; a crash makes libFuzzer exit non-zero, then the next target runs
  timeout $((SECS + 1800)) cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" > "logs/$t.log" 2>&1
  rc=$?
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "logs/$t.log" | grep -oE '[0-9]+$' | tail -1)
  corpus=$(find "corpus/$t" -type f | wc -l)
  crashes=$(find "artifacts/$t" -type f | wc -l)
  line="$t: rc=$rc execs=${execs:-?} corpus=$corpus artifacts=$crashes"
  echo "$line" | tee -a "$summary"
  if [ "$rc" -ne 0 ]; then
    failed=1
    grep -m1 -A12 -E "panicked at|ERROR: libFuzzer|SUMMARY" "logs/$t.log" || tail -20 "logs/$t.log"
  fi
done
echo "== summary (fuzz/$summary)"
cat "$summary"
exit "$failed"
