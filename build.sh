#!/usr/bin/env bash
# Build, demo and test entry point.
#
#   ./build.sh          build the static musl binary and the layer zip
#   ./build.sh demo     build, then run the extension end to end locally
#                       (Lambda simulator + kinesalite) and print a summary
#   ./build.sh test     everything CI checks: fmt, clippy, unit tests, the
#                       layer, then the end-to-end tests on real emulators
#
# Installs what it needs on a fresh machine (the musl target, the test
# tools into .deps/); nothing is installed system-wide except, when missing,
# the rustup target.
set -euo pipefail
cd "$(dirname "$0")"

NAME=kinesis-telemetry-extension
TARGET=x86_64-unknown-linux-musl
BIN="target/$TARGET/release/$NAME"
LAYER_DIR=layer
ZIP="$LAYER_DIR/$NAME-x86_64.zip"

log() { printf '\n== %s\n' "$*" >&2; }

ensure_target() {
  if ! rustup target list --installed 2>/dev/null | grep -qx "$1"; then
    log "adding rust target $1"
    rustup target add "$1"
  fi
}

build_layer() {
  ensure_target "$TARGET"
  # ring's C parts need a C compiler for musl; plain gcc works for them
  # when musl-gcc (Debian musl-tools) is absent.
  if ! command -v musl-gcc >/dev/null; then
    export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-gcc}"
  fi
  log "building $NAME for $TARGET (release: opt-level z, fat LTO, panic abort, stripped)"
  cargo build --release --locked --target "$TARGET"
  mkdir -p "$LAYER_DIR/extensions"
  cp "$BIN" "$LAYER_DIR/extensions/$NAME"
  chmod 755 "$LAYER_DIR/extensions/$NAME"
  # zip with Python's zipfile: keeps the exec bit, no zip tool needed.
  python3 - "$ZIP" "$LAYER_DIR/extensions/$NAME" "extensions/$NAME" <<'PY'
import sys, zipfile, os
zip_path, src, arc = sys.argv[1:]
info = zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0))
info.external_attr = (0o100755 << 16)
info.compress_type = zipfile.ZIP_DEFLATED
with open(src, "rb") as f, zipfile.ZipFile(zip_path + ".tmp", "w") as z:
    z.writestr(info, f.read(), compresslevel=9)
os.replace(zip_path + ".tmp", zip_path)
PY
  local size
  size=$(stat -c %s "$LAYER_DIR/extensions/$NAME")
  echo "binary: $LAYER_DIR/extensions/$NAME  $size bytes ($(awk "BEGIN{printf \"%.2f\", $size/1048576}") MiB)"
  if command -v file >/dev/null; then file "$LAYER_DIR/extensions/$NAME"; fi
  echo "layer:  $ZIP  $(stat -c %s "$ZIP") bytes"
}

install_test_deps() {
  bash tests/install_deps.sh
}

PY=.deps/venv/bin/python

case "${1:-layer}" in
  layer|build)
    build_layer
    ;;
  demo)
    build_layer
    install_test_deps
    log "demo: Lambda simulator + kinesalite"
    "$PY" tests/demo.py --extension "$LAYER_DIR/extensions/$NAME" "${@:2}"
    ;;
  test)
    log "cargo fmt --check"
    cargo fmt --check
    log "cargo clippy"
    cargo clippy --locked --all-targets -- -D warnings
    log "unit tests"
    cargo test --locked
    build_layer
    install_test_deps
    log "end-to-end tests (pytest, real emulators)"
    EXTENSION_BIN="$PWD/$LAYER_DIR/extensions/$NAME" \
      "$PY" -m pytest tests -n "${PYTEST_WORKERS:-4}" -q -p no:cacheprovider "${@:2}"
    ;;
  *)
    echo "usage: $0 [layer|demo|test]" >&2
    exit 2
    ;;
esac
