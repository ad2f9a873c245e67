#!/usr/bin/env bash
# Build, demo and test entry point.
#
#   ./build.sh          build the static musl binaries (x86_64 and arm64) and
#                       one layer zip per architecture
#   ./build.sh demo     build, then run the extension end to end locally
#                       (Lambda simulator + kinesalite) and print a summary
#   ./build.sh bench    the benchmark suite (bench/run.sh; not part of CI)
#   ./build.sh test     everything CI checks: fmt, clippy, unit tests, the
#                       layers, then the end-to-end tests on real emulators
#                       (the arm64 binary under qemu-user) and the
#                       deployment template's checks
#
# Outputs:
#   layer/extensions/kinesis-telemetry-extension          x86_64 binary
#   layer/arm64/extensions/kinesis-telemetry-extension    arm64 binary
#   layer/kinesis-telemetry-extension-x86_64.zip          layer zips, each holding
#   layer/kinesis-telemetry-extension-arm64.zip           extensions/kinesis-telemetry-extension
#
# Installs what it needs on a fresh machine: the rustup targets, and, only when
# missing, Debian packages: gcc-aarch64-linux-gnu + libc6-dev-arm64-cross (to
# compile ring's C parts for arm64; set CC_aarch64_unknown_linux_musl to use
# another compiler instead) and, for `test`, qemu-user (runs the arm64 binary).
# The test tools go into .deps/ (tests/install_deps.sh).
set -euo pipefail
cd "$(dirname "$0")"

NAME=kinesis-telemetry-extension
LAYER_DIR=layer
ARCHES=(x86_64 arm64) # Lambda's architecture names
declare -A RUST_TARGET=([x86_64]=x86_64-unknown-linux-musl [arm64]=aarch64-unknown-linux-musl)
declare -A STAGE=([x86_64]="$LAYER_DIR" [arm64]="$LAYER_DIR/arm64") # STAGE/extensions/NAME

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'build.sh: ERROR: %s\n' "$*" >&2; exit 1; }

ensure_target() {
  if ! rustup target list --installed 2>/dev/null | grep -qx "$1"; then
    log "adding rust target $1"
    rustup target add "$1"
  fi
}

# ---------------------------------------------------------------- system packages
MISSING_PKGS=()
APT_UPDATED=0

# want PACKAGE PROBE...: queue PACKAGE unless one PROBE exists (a command, or an absolute path).
want() {
  local probe
  for probe in "${@:2}"; do
    if [[ $probe == /* ]]; then
      [[ -e $probe ]] && return 0
    else
      command -v "$probe" >/dev/null && return 0
    fi
  done
  MISSING_PKGS+=("$1")
}

apt_install() {
  (($# == 0)) && return 0
  command -v apt-get >/dev/null || die "missing packages: $* (Debian names); install them, or set CC_aarch64_unknown_linux_musl"
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "missing packages: $*; run as root or install them: apt-get install $*"
    sudo=(sudo)
  fi
  # Wait for the dpkg lock instead of failing when another apt-get is running.
  local lock=(-o DPkg::Lock::Timeout=300)
  if ((APT_UPDATED == 0)); then
    log "apt-get update (to install: $*)"
    local try
    for try in 1 2 3; do # another apt-get holding the lists lock fails it at once
      "${sudo[@]}" apt-get "${lock[@]}" update -q && break
      ((try < 3)) || die "apt-get update failed"
      sleep 10
    done
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get "${lock[@]}" install -y -q --no-install-recommends "$@"
}

# ensure_system_packages [test]: what the arm64 build needs, plus qemu-user for `test`;
# one apt-get run for all of it, none when nothing is missing.
ensure_system_packages() {
  MISSING_PKGS=()
  if [[ -z ${CC_aarch64_unknown_linux_musl:-} ]]; then
    want gcc-aarch64-linux-gnu aarch64-linux-gnu-gcc
    want libc6-dev-arm64-cross /usr/aarch64-linux-gnu/include/stdint.h
  fi
  if [[ ${1:-} == test ]]; then
    want qemu-user qemu-aarch64 qemu-aarch64-static
  fi
  apt_install "${MISSING_PKGS[@]}"
}

# ---------------------------------------------------------------- build
build_layers() {
  local arch names=() targets=()
  for arch in "${ARCHES[@]}"; do
    ensure_target "${RUST_TARGET[$arch]}"
    names+=("${RUST_TARGET[$arch]}")
    targets+=(--target "${RUST_TARGET[$arch]}")
  done
  # ring's C parts need a C compiler for each musl target. x86_64: plain gcc works
  # when musl-gcc (Debian musl-tools) is absent. arm64: Debian's cross gcc. Both
  # link with rust-lld (.cargo/config.toml).
  if ! command -v musl-gcc >/dev/null; then
    export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-gcc}"
  fi
  export CC_aarch64_unknown_linux_musl="${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}"
  # One cargo run for both targets: their fat-LTO links (single-threaded, the
  # longest step) run side by side instead of one after the other.
  log "building $NAME for ${names[*]} (release: opt-level z, fat LTO, panic abort, stripped)"
  cargo build --release --locked "${targets[@]}"
  for arch in "${ARCHES[@]}"; do
    package_layer "$arch"
  done
}

# package_layer ARCH: copy the binary into the layer tree, check it, zip it.
package_layer() {
  local arch=$1
  local bin="target/${RUST_TARGET[$arch]}/release/$NAME"
  local staged="${STAGE[$arch]}/extensions/$NAME"
  local zip="$LAYER_DIR/$NAME-$arch.zip"
  mkdir -p "${STAGE[$arch]}/extensions"
  # Replace by rename: a copy over a binary that is running (a test, the demo) fails
  # with "Text file busy"; the running process keeps the old file.
  cp "$bin" "$staged.tmp"
  chmod 755 "$staged.tmp"
  mv -f "$staged.tmp" "$staged"
  # Check (static ELF of the right machine) and zip with Python's zipfile: keeps the
  # exec bit, fixed timestamps, no zip tool needed.
  python3 - "$zip" "$staged" "extensions/$NAME" "$arch" <<'PY'
import os, struct, sys, zipfile
zip_path, src, arc, arch = sys.argv[1:]
with open(src, "rb") as f:
    data = f.read()
machine = {"x86_64": 62, "arm64": 183}[arch]
if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
    sys.exit(f"{src}: not a 64-bit little-endian ELF file")
e_machine, = struct.unpack_from("<H", data, 18)
if e_machine != machine:
    sys.exit(f"{src}: ELF machine {e_machine}, expected {machine} for {arch}")
e_phoff, = struct.unpack_from("<Q", data, 32)
e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
kinds = {struct.unpack_from("<I", data, e_phoff + i * e_phentsize)[0] for i in range(e_phnum)}
if kinds & {2, 3}:  # PT_DYNAMIC, PT_INTERP
    sys.exit(f"{src}: dynamically linked; the layer needs a static binary")
info = zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0))
info.external_attr = (0o100755 << 16)
info.compress_type = zipfile.ZIP_DEFLATED
with zipfile.ZipFile(zip_path + ".tmp", "w") as z:
    z.writestr(info, data, compresslevel=9)
os.replace(zip_path + ".tmp", zip_path)
PY
  local size
  size=$(stat -c %s "$staged")
  echo "[$arch] binary: $staged  $size bytes ($(awk "BEGIN{printf \"%.2f\", $size/1048576}") MiB)"
  if command -v file >/dev/null; then echo "[$arch] $(file -b "$staged")"; fi
  echo "[$arch] layer:  $zip  $(stat -c %s "$zip") bytes"
}

install_test_deps() {
  bash tests/install_deps.sh
}

PY=.deps/venv/bin/python

case "${1:-layer}" in
  layer|build)
    ensure_system_packages
    build_layers
    ;;
  demo)
    ensure_system_packages
    build_layers
    install_test_deps
    log "demo: Lambda simulator + kinesalite"
    "$PY" tests/demo.py --extension "$LAYER_DIR/extensions/$NAME" "${@:2}"
    ;;
  bench)
    # The benchmark suite (not part of CI): figures in bench/results.md.
    exec bash bench/run.sh "${@:2}"
    ;;
  test)
    ensure_system_packages test
    # The test tools (pip, npm: mostly network and disk) install while cargo compiles.
    mkdir -p .deps
    log "tests/install_deps.sh started in the background (log: .deps/install_deps.log)"
    install_test_deps >.deps/install_deps.log 2>&1 &
    deps_pid=$!
    log "cargo fmt --check"
    cargo fmt --check
    log "cargo clippy"
    cargo clippy --locked --all-targets -- -D warnings
    log "unit tests"
    cargo test --locked
    build_layers
    log "waiting for tests/install_deps.sh"
    if ! wait "$deps_pid"; then
      cat .deps/install_deps.log >&2
      die "tests/install_deps.sh failed"
    fi
    cat .deps/install_deps.log
    log "end-to-end tests (pytest, real emulators; arm64 under qemu-user) and template checks"
    # Every test has a time limit (a hang fails that test, not the whole run),
    # skips are listed (-rs) and fail the run (tests/conftest.py). Tests that
    # assert on durations (marker `timing`) and the soak tier (marker `soak`:
    # idle spells, CPU per idle second, flat resources, 1,000 invokes with one
    # AssumeRole; about 2 min) run afterwards, one at a time, away from the
    # contention of parallel workers on 2 cores.
    export EXTENSION_BIN="$PWD/${STAGE[x86_64]}/extensions/$NAME"
    export EXTENSION_BIN_ARM64="$PWD/${STAGE[arm64]}/extensions/$NAME"
    local_args=(-q -rs -p no:cacheprovider --timeout "${PYTEST_TIMEOUT:-300}")
    "$PY" -m pytest tests -n "${PYTEST_WORKERS:-4}" -m "not timing and not soak" "${local_args[@]}" "${@:2}"
    log "timing and soak tests (one at a time)"
    "$PY" -m pytest tests -m "timing or soak" "${local_args[@]}" "${@:2}"
    ;;
  *)
    echo "usage: $0 [layer|demo|test|bench]" >&2
    exit 2
    ;;
esac
