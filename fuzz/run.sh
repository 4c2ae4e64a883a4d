#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 30) on its committed corpus: ./fuzz/run.sh [SECONDS]
#
# Needs the nightly toolchain (rustup toolchain install nightly) and cargo-fuzz (cargo install cargo-fuzz).
# The first run builds the targets (about 10 minutes on one core); then each target takes SECONDS.
# Each runs under nice -n 19 as one libFuzzer job, so it only takes idle CPU. The committed corpus
# (fuzz/corpus/TARGET) and the crashes found before (fuzz/regressions/TARGET) are read, never written:
# new inputs go to a scratch directory, so the tree stays clean.
#
# Exits non-zero when a target crashes (a panic, or a broken invariant of stackinit::fuzzing), with the
# input left in fuzz/artifacts/TARGET/. Reproduce with
#   cargo +nightly fuzz run -s none -a TARGET fuzz/artifacts/TARGET/crash-...
# or add it to fuzz/regressions/TARGET/ and run `cargo test --test fuzz_corpus` (stable).
#
# Environment: FUZZ_TARGETS (default: all), FUZZ_ARGS (extra libFuzzer flags, e.g. -runs=1000000).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
SECONDS_EACH=${1:-30}
TARGETS=${FUZZ_TARGETS:-config host uri_path notify control}
# -s none: the product is safe Rust (unsafe is denied outside four audited files none of these reach), so
# AddressSanitizer would only halve the speed; -a keeps debug assertions and overflow checks on.
BUILD_FLAGS=(-s none -a)

command -v cargo >/dev/null || { echo "fuzz/run.sh: cargo not found" >&2; exit 1; }
cargo +nightly fuzz --version >/dev/null 2>&1 || {
    echo "fuzz/run.sh: needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)" >&2
    exit 1
}

CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} nice -n 19 cargo +nightly fuzz build "${BUILD_FLAGS[@]}" >/dev/null

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
for target in $TARGETS; do
    mkdir -p "$scratch/$target" "regressions/$target"
    dict=()
    [ -f "dict/$target.dict" ] && dict=("-dict=dict/$target.dict")
    printf '==> %s: %ss on %s inputs\n' "$target" "$SECONDS_EACH" "$(ls "corpus/$target" | wc -l)"
    # -jobs=1 -workers=1: one process, its output in fuzz-0.log; shown in short here.
    if CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} nice -n 19 cargo +nightly fuzz run "${BUILD_FLAGS[@]}" "$target" \
        "$scratch/$target" "corpus/$target" "regressions/$target" -- \
        -jobs=1 -workers=1 -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" ${FUZZ_ARGS:-} >/dev/null 2>&1; then
        grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units)' fuzz-0.log | tail -2 | sed 's/^/    /'
    else
        status=1
        echo "    CRASH: $target" >&2
        grep -E 'panicked at|^(thread|assertion)|SUMMARY|Test unit written' -A2 fuzz-0.log | head -20 >&2
    fi
done
rm -f fuzz-0.log
exit $status
