#!/usr/bin/env bash
# The 30-minute soak (not part of CI): bench/soak.py (arguments passed on:
# --minutes, --burst-s, --idle-s, --rate, ...) writes bench/soak-results.json
# and .md, then bench/soak_chart.py draws bench/soak.png (RSS, CPU and threads
# over time) with matplotlib from bench/.chart-venv (made by chart.sh).
# Uses the built layer binary (EXTENSION_BIN overrides) and the test tools in .deps/.
set -euo pipefail
cd "$(dirname "$0")/.."
"$PWD/.deps/venv/bin/python" bench/soak.py "$@"
CHART_SCRIPT=soak_chart.py bench/chart.sh
