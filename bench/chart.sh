#!/usr/bin/env bash
# Draws bench/chart.png from bench/results.json (bench/chart.py), with
# matplotlib in a venv of its own (bench/.chart-venv, git-ignored) so the
# test tools' environment stays as pinned. bench/run.sh calls it last.
# CHART_SCRIPT=soak_chart.py draws the soak's chart instead (bench/soak.sh).
set -euo pipefail
cd "$(dirname "$0")"
VENV=.chart-venv
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c "import matplotlib" 2>/dev/null; then
  python3 -m venv --without-pip "$VENV"
  python3 -m pip --python "$VENV/bin/python" install --quiet --progress-bar off "matplotlib==3.10.*"
fi
exec "$VENV/bin/python" "${CHART_SCRIPT:-chart.py}" "$@"
