#!/usr/bin/env bash
# Installs what the integration tests need, into <repo>/.deps (git-ignored):
#
#   .deps/venv   Python venv from tests/requirements.txt (pytest, boto3, moto server)
#   .deps/lint-venv  Python venv from tests/requirements-lint.txt (cfn-lint, checkov,
#                aws-sam-translator: the deployment template's checks)
#   .deps/node   npm packages from tests/package.json + package-lock.json
#                (kinesalite, kinesis-local), installed with `npm ci`
#
# Idempotent and fast when nothing changed: each part has a stamp file holding the
# hash of its inputs (requirements files / package.json+lock, interpreter / node version);
# a part whose stamp matches is skipped. A changed input rebuilds that part from
# scratch. Only the ordinary package clients (pip, npm) talk to their registries.
#
# Needs: python3 (with venv/ensurepip), node and npm on PATH.
# Env:   PYTHON=python3.11   interpreter to build the venv from (default python3)
#        FORCE=1             ignore the stamps and reinstall everything
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TESTS="$ROOT/tests"
DEPS="$ROOT/.deps"
VENV="$DEPS/venv"
NODE_DIR="$DEPS/node"
PYTHON="${PYTHON:-python3}"
FORCE="${FORCE:-0}"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

now_ms() { local t="${EPOCHREALTIME:-$(date +%s.%N)}"; t="${t/,/.}"; echo $(( ${t%.*} * 1000 + 10#$(printf '%.3s' "${t#*.}000") )); }
t0="$(now_ms)"
log() { local ms=$(( $(now_ms) - t0 )); printf '[install_deps %3d.%ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
die() { log "ERROR: $*"; exit 1; }

hash_of() { # hash_of <string> <files...>
    { printf '%s\n' "$1"; shift; cat "$@"; } | sha256sum | cut -d' ' -f1
}

for tool in "$PYTHON" node npm sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' not found on PATH"
done

mkdir -p "$DEPS"
# Two installers at once (a developer and CI in one checkout) would trample each other.
if command -v flock >/dev/null; then
    exec 9>"$DEPS/.install.lock"
    flock 9
fi

# ---------------------------------------------------------------- Python venv
py_version="$("$PYTHON" -c 'import sys; print(sys.version)')"
py_key="$(hash_of "python=$py_version" "$TESTS/requirements.txt")"
py_stamp="$VENV/.installed-$py_key"

if [[ "$FORCE" != 1 && -f "$py_stamp" && -x "$VENV/bin/python" ]] \
    && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    log "venv up to date ($VENV, requirements ${py_key:0:12})"
else
    log "creating venv $VENV with $("$PYTHON" --version 2>&1)"
    rm -rf "$VENV"
    # Without its own pip (ensurepip costs ~6 s): the host's pip installs into it via
    # --python (pip >= 22.3); if the host's pip can't, fall back to ensurepip.
    "$PYTHON" -m venv --without-pip "$VENV"
    if "$PYTHON" -m pip --python "$VENV/bin/python" --version >/dev/null 2>&1; then
        pip=("$PYTHON" -m pip --python "$VENV/bin/python")
    else
        log "host pip has no --python; bootstrapping pip inside the venv"
        "$VENV/bin/python" -m ensurepip --default-pip >/dev/null
        pip=("$VENV/bin/python" -m pip)
    fi
    log "pip install -r tests/requirements.txt"
    # --no-compile: byte-compiling all of botocore/moto/sympy up front costs ~15 s;
    # only the modules the tests import are compiled, below.
    "${pip[@]}" install --quiet --progress-bar off --no-compile -r "$TESTS/requirements.txt"
    # Byte-compile just what the tests import, by importing it with bytecode writing on
    # (this machine sets PYTHONDONTWRITEBYTECODE=1; without .pyc files every moto start
    # and every test process recompiles botocore and moto: ~1 s each).
    log "warming the byte-code cache of the imported modules"
    env -u PYTHONDONTWRITEBYTECODE "$VENV/bin/python" -c '
import boto3, moto.server, moto.backends, pytest, xdist, pytest_timeout, flask, werkzeug
import moto.kinesis.responses, moto.iam.responses, moto.sts.responses
import moto.moto_api._internal.responses
boto3.session.Session().client("kinesis", region_name="us-east-1",
                               aws_access_key_id="a", aws_secret_access_key="b")
' || die "venv installed but its packages do not import"
    touch "$py_stamp"
    log "venv ready"
fi

# ---------------------------------------------------------------- template linters
# cfn-lint, checkov and the SAM translator for tests/test_template.py, in a venv of
# their own (checkov pins an old boto3 that must not meet moto's).
LINT_VENV="$DEPS/lint-venv"
lint_key="$(hash_of "python=$py_version" "$TESTS/requirements-lint.txt")"
lint_stamp="$LINT_VENV/.installed-$lint_key"

if [[ "$FORCE" != 1 && -f "$lint_stamp" && -x "$LINT_VENV/bin/python" ]] \
    && "$LINT_VENV/bin/python" -c 'import sys' 2>/dev/null; then
    log "lint venv up to date ($LINT_VENV, requirements ${lint_key:0:12})"
else
    log "creating lint venv $LINT_VENV"
    rm -rf "$LINT_VENV"
    "$PYTHON" -m venv --without-pip "$LINT_VENV"
    if "$PYTHON" -m pip --python "$LINT_VENV/bin/python" --version >/dev/null 2>&1; then
        lint_pip=("$PYTHON" -m pip --python "$LINT_VENV/bin/python")
    else
        "$LINT_VENV/bin/python" -m ensurepip --default-pip >/dev/null
        lint_pip=("$LINT_VENV/bin/python" -m pip)
    fi
    log "pip install -r tests/requirements-lint.txt"
    "${lint_pip[@]}" install --quiet --progress-bar off --no-compile -r "$TESTS/requirements-lint.txt"
    # One run of each tool with bytecode writing on: proves they work and leaves .pyc
    # files for what the tests use (checkov alone imports for ~10 s without them).
    log "warming the linters (one run on layer/template.yaml)"
    template="$ROOT/layer/template.yaml"
    env -u PYTHONDONTWRITEBYTECODE "$LINT_VENV/bin/python" - "$template" <<'PY' \
        || die "lint venv installed but cfn-lint / samtranslator do not work"
import os, sys
from cfnlint.api import lint_all
import samtranslator.translator.transform  # noqa: F401
if os.path.exists(sys.argv[1]):
    lint_all(open(sys.argv[1]).read())
PY
    if [[ -f "$template" ]]; then
        env -u PYTHONDONTWRITEBYTECODE "$LINT_VENV/bin/checkov" --quiet --soft-fail --skip-download \
            --framework cloudformation -f "$template" >/dev/null \
            || die "lint venv installed but checkov does not run"
    fi
    touch "$lint_stamp"
    log "lint venv ready"
fi

# ---------------------------------------------------------------- npm packages
node_version="$(node --version)"
npm_key="$(hash_of "node=$node_version" "$TESTS/package.json" "$TESTS/package-lock.json")"
npm_stamp="$NODE_DIR/.installed-$npm_key"

if [[ "$FORCE" != 1 && -f "$npm_stamp" && -d "$NODE_DIR/node_modules" ]]; then
    log "npm packages up to date ($NODE_DIR, lock ${npm_key:0:12})"
else
    log "npm ci into $NODE_DIR (node $node_version, npm $(npm --version))"
    rm -rf "$NODE_DIR"
    mkdir -p "$NODE_DIR"
    cp "$TESTS/package.json" "$TESTS/package-lock.json" "$NODE_DIR/"
    # --omit=optional: kinesalite's optional leveldown (native, only for its on-disk
    # mode) is not needed; we run it in memory. No package needs install scripts.
    (cd "$NODE_DIR" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error)
    node -e '
        const d = process.argv[1] + "/node_modules/";
        require(d + "kinesalite");
        for (const f of ["kinesis-local/main.js", "kinesis-local/server.json"])
            require("fs").accessSync(d + f);
    ' "$NODE_DIR" || die "npm packages installed but kinesalite / kinesis-local are not usable"
    touch "$npm_stamp"
    log "npm packages ready"
fi

log "done: $VENV/bin/python -m pytest tests/ ..."
