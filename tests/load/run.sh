#!/usr/bin/env bash
# Bounded load test against 127.0.0.1 only (CI does not run it):
#   tests/load/run.sh [SECONDS=120] [THREADS=12]
# Uses target/debug/metahub (or METAHUB_BIN) and Debian's docker-registry; writes tests/load/report.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
export METAHUB_BIN=${METAHUB_BIN:-$PWD/target/debug/metahub}
[ -x "$METAHUB_BIN" ] || { echo "no metahub binary at $METAHUB_BIN (cargo build -p metahub)" >&2; exit 2; }
command -v docker-registry >/dev/null || { echo "docker-registry is not installed (apt-get install docker-registry)" >&2; exit 2; }
duration=${1:-120}
threads=${2:-12}
exec timeout $((duration + 300)) "${PYTHON:-python3}" tests/load/load.py --duration "$duration" --threads "$threads" --report tests/load/report.json
