#!/usr/bin/env bash
# Benchmark suite of issue 6 (not part of CI): the extension against its
# baselines, measured in one run on this machine.
#
#   bench/run.sh [--quick] [--only SECTIONS] [--skip SECTIONS] [--before BINARY]
#
# Sections (comma-separated): startup,size,timeline,rss,cpu,callgrind,profile,flush,drain,answer,throughput
# --quick: fewer runs per figure (a smoke test of the suite, not for figures).
# --before: an earlier build of this extension, measured beside it in the same
#   run (start-up, RSS, CPU, answer times, throughput): a before/after table.
#
# What it does:
#   1. uses the built layer binaries (layer/extensions/..., layer/arm64/...;
#      runs ./build.sh first if they are missing) and the test tools in .deps/
#      (tests/install_deps.sh),
#   2. builds, once, what only the bench uses, all under bench/ (git-ignored):
#        bench/tools                 start-up harness, instant sink, sink load (std-only Rust)
#        bench/baselines/floor       register + next only (static musl, x86_64 + arm64)
#        bench/baselines/rust-sdk    lambda-extension + aws-sdk-kinesis (static musl, release)
#        bench/baselines/node        Node.js + @aws-sdk/client-kinesis (npm ci)
#        bench/.build                symbol build of the extension + `cargo bloat` report
#      The rust-sdk baseline takes several minutes the first time; if it fails
#      or takes longer than BENCH_SDK_BUILD_TIMEOUT (900 s), the bench says so
#      and measures the others.
#   3. runs bench/bench.py (under `nice -n ${BENCH_NICE:--10}`, so that other
#      work on the machine disturbs the figures less), which writes
#      bench/results.json and bench/results.md and prints the markdown.
#
# Needs: cargo with the x86_64/aarch64 musl targets (build.sh installs them),
# gcc, node/npm, python3, valgrind, perf (linux-perf), strace; root for the
# cold page cache figures (drop_caches) and for the negative nice level.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
B=$ROOT/bench
NAME=kinesis-telemetry-extension
PY=$ROOT/.deps/venv/bin/python
SDK_TIMEOUT=${BENCH_SDK_BUILD_TIMEOUT:-900}
NICE=${BENCH_NICE:--10}

log() { printf '\n== bench: %s\n' "$*" >&2; }

ARGS=()
while (($#)); do
  case $1 in
    --quick) ARGS+=(--quick) ;;
    --only|--skip|--before) ARGS+=("$1" "$2"); shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# ------------------------------------------------------------ prerequisites
OURS=$ROOT/layer/extensions/$NAME
OURS_ARM=$ROOT/layer/arm64/extensions/$NAME
if [[ ! -x $OURS || ! -x $OURS_ARM ]]; then
  log "layer binaries missing: ./build.sh"
  ./build.sh
fi
bash tests/install_deps.sh >&2
for tool in valgrind perf strace taskset; do
  if ! command -v "$tool" >/dev/null; then
    pkg=$tool
    case $tool in perf) pkg=linux-perf ;; taskset) pkg=util-linux ;; esac
    log "installing $pkg"
    (apt-get install -y -q --no-install-recommends "$pkg" || { apt-get update -q && apt-get install -y -q --no-install-recommends "$pkg"; }) >&2
  fi
done
if [[ -z ${CC_x86_64_unknown_linux_musl:-} ]] && ! command -v musl-gcc >/dev/null; then
  export CC_x86_64_unknown_linux_musl=gcc
fi
export CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}
BUILD_INFO=$B/.build/build-info.json
mkdir -p "$B/.build"
declare -A INFO

# ------------------------------------------------------------ bench tools
log "bench tools (std-only Rust)"
(cd "$B/tools" && cargo build --release -q)
TOOLS=$B/tools/target/release

# ------------------------------------------------------------ floor baseline
# The extension's own profile and static flags, and its linker script when present.
log "baseline: floor (x86_64, arm64)"
# Both targets link with rust-lld, as the extension does (.cargo/config.toml,
# which cargo also finds from bench/baselines/floor).
LD=$ROOT/src/no-unwind-tables.ld
FLAGS="-C target-feature=+crt-static -C relocation-model=static"
if [[ -f $LD ]]; then
  FLAGS+=" -C link-arg=-T$LD -C link-arg=--no-eh-frame-hdr -C link-arg=--icf=all"
fi
(cd "$B/baselines/floor" &&
  RUSTFLAGS="$FLAGS" CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
    cargo build --release -q --target x86_64-unknown-linux-musl &&
  RUSTFLAGS="$FLAGS" CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
    cargo build --release -q --target aarch64-unknown-linux-musl)
FLOOR=$B/baselines/floor/target/x86_64-unknown-linux-musl/release/$NAME
FLOOR_ARM=$B/baselines/floor/target/aarch64-unknown-linux-musl/release/$NAME

# ------------------------------------------------------------ rust-sdk baseline
SDK_DIR=$B/baselines/rust-sdk
SDK=$SDK_DIR/target/x86_64-unknown-linux-musl/release/$NAME
SDK_STATUS=built
log "baseline: lambda-extension + aws-sdk-kinesis (first build: several minutes)"
t0=$(date +%s)
had_sdk=0
[[ -x $SDK ]] && had_sdk=1
locked=()
[[ -f $SDK_DIR/Cargo.lock ]] && locked=(--locked)
if ! (cd "$SDK_DIR" && RUSTFLAGS="-C target-feature=+crt-static" timeout "$SDK_TIMEOUT" \
      cargo build --release "${locked[@]}" --target x86_64-unknown-linux-musl) >"$B/.build/rust-sdk-build.log" 2>&1; then
  SDK_STATUS="build failed or exceeded ${SDK_TIMEOUT}s: see bench/.build/rust-sdk-build.log"
  log "$SDK_STATUS"
  tail -5 "$B/.build/rust-sdk-build.log" >&2 || true
  SDK=""
fi
SDK_SECS=$(( $(date +%s) - t0 ))
# The one-time build's duration, kept for the report.
if ((had_sdk == 0)) && [[ -n $SDK ]]; then
  printf '{"first_build_wall_seconds": %d, "loadavg_after": "%s"}\n' "$SDK_SECS" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" >"$B/.build/rust-sdk-first-build.json"
fi

# ------------------------------------------------------------ node baseline
NODE_DIR=$B/baselines/node
log "baseline: Node.js + @aws-sdk/client-kinesis (npm)"
stamp=$NODE_DIR/node_modules/.bench-stamp
want=$(cat "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  (cd "$NODE_DIR" && if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi) >&2
  echo "$want" >"$stamp"
fi
NODE_EXT=$NODE_DIR/extensions/$NAME

# ------------------------------------------------------------ symbols + bloat
# Same source and profile as the shipped binary, not stripped (in a separate
# target dir so the project's own target/ is not disturbed).
log "symbol build of the extension + cargo bloat"
BLOAT=$B/.build/bloat.txt
export CARGO_PROFILE_RELEASE_STRIP=false
if ! CARGO_TARGET_DIR=$B/.build/target cargo bloat --release --target x86_64-unknown-linux-musl \
     --crates -n 15 >"$BLOAT" 2>"$B/.build/bloat.log"; then
  echo "cargo bloat failed: $(tail -3 "$B/.build/bloat.log")" >"$BLOAT"
fi
unset CARGO_PROFILE_RELEASE_STRIP
SYMBOLS=$B/.build/target/x86_64-unknown-linux-musl/release/$NAME

PERF_INSN="not supported (perf stat -e instructions)"
if perf stat -x, -e instructions true 2>&1 | grep -q '^[0-9]'; then PERF_INSN=supported; fi

"$PY" - "$BUILD_INFO" "$SDK_STATUS" "$SDK_SECS" <<'EOF'
import json, os, sys
info = {"rust_sdk_baseline": sys.argv[2], "rust_sdk_build_or_check_seconds": int(sys.argv[3]),
        "rust_sdk_profile": "release, strip = true (opt-level 3, no LTO), static musl"}
first = os.path.join(os.path.dirname(sys.argv[1]), "rust-sdk-first-build.json")
if os.path.exists(first):
    info["rust_sdk_first_build"] = json.load(open(first))
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF

# ------------------------------------------------------------ measure
log "measuring (bench/bench.py ${ARGS[*]:-})"
NICE_CMD=()
if [[ -n $NICE ]] && nice -n "$NICE" true 2>/dev/null; then NICE_CMD=(nice -n "$NICE"); fi
"${NICE_CMD[@]}" "$PY" "$B/bench.py" \
  --ours "$OURS" --ours-arm64 "$OURS_ARM" --symbols "$SYMBOLS" \
  --floor "$FLOOR" --floor-arm64 "$FLOOR_ARM" \
  --rust-sdk "$SDK" --node "$NODE_EXT" \
  --tools "$TOOLS" --bloat "$BLOAT" --build-info "$BUILD_INFO" \
  --perf-instructions "$PERF_INSN" --nice "" \
  --out "$B/results.json" --md "$B/results.md" "${ARGS[@]}"

# 4. the picture of the headline figures (bench/chart.png, shown in the README)
log "drawing bench/chart.png"
"$B/chart.sh" "$B/results.json" "$B/chart.png" || log "chart not drawn (matplotlib unavailable?)"
