#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 30) on its committed corpus: ./fuzz/run.sh [SECONDS]
# Only build them: ./fuzz/run.sh --build (scripts/test builds them this way while the tests run).
#
# Needs the nightly toolchain (rustup toolchain install nightly), cargo-fuzz (cargo install cargo-fuzz
# --version 0.13.2 --locked) and a C++ compiler (libFuzzer itself is built from source).
# The first run builds the targets (5.5 minutes of CPU, 2.2 GB of memory at most); then each target takes
# SECONDS.
# Each runs under nice -n 19 as one libFuzzer process, so it only takes idle CPU. The committed corpus
# (fuzz/corpus/TARGET) and the crashes found before (fuzz/regressions/TARGET) are read, never written:
# new inputs go to a scratch directory, so the tree stays clean.
#
# Exits non-zero when a target crashes (a panic, a broken invariant of stackinit::fuzzing, a timeout or
# running out of memory), with the input left in fuzz/artifacts/TARGET/. Reproduce with
#   cargo +nightly fuzz run -s none -a TARGET fuzz/artifacts/TARGET/crash-...
# or add it to fuzz/regressions/TARGET/ and run `cargo test --test fuzz_corpus` (stable).
#
# Environment: FUZZ_TARGETS (default: all), FUZZ_ARGS (extra libFuzzer flags, e.g. -runs=1000000),
# FUZZ_KEEP (a directory: keep the new inputs there, in TARGET/, to merge them into the corpus).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
BUILD_ONLY=""
if [ "${1:-}" = --build ]; then
    BUILD_ONLY=1
    shift
fi
SECONDS_EACH=${1:-30}
TARGETS=${FUZZ_TARGETS:-config host uri_path notify control}
# -s none: the product is safe Rust (unsafe is denied outside five audited files none of these reach), so
# AddressSanitizer would only halve the speed; -a keeps debug assertions and overflow checks on.
BUILD_FLAGS=(-s none -a)
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

command -v cargo >/dev/null || { echo "fuzz/run.sh: cargo not found" >&2; exit 1; }
cargo +nightly fuzz --version >/dev/null 2>&1 || {
    echo "fuzz/run.sh: needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)" >&2
    exit 1
}

nice -n 19 cargo +nightly fuzz build "${BUILD_FLAGS[@]}" >/dev/null
[ -z "$BUILD_ONLY" ] || exit 0

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
new=${FUZZ_KEEP:-$scratch/new}
status=0
for target in $TARGETS; do
    mkdir -p "$new/$target" "regressions/$target" "artifacts/$target"
    dict=()
    [ -f "dict/$target.dict" ] && dict=("-dict=dict/$target.dict")
    printf '==> %s: %ss on %s inputs\n' "$target" "$SECONDS_EACH" "$(ls "corpus/$target" | wc -l)"
    log=$scratch/$target.log
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    if nice -n 19 cargo +nightly fuzz run "${BUILD_FLAGS[@]}" "$target" \
        "$new/$target" "corpus/$target" "regressions/$target" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" ${FUZZ_ARGS:-} >"$log" 2>&1; then
        grep -E '^(#[0-9]+.*DONE|stat::(number_of_executed_units|average_exec_per_sec))' "$log" | sed 's/^/    /'
    else
        status=1
        echo "    CRASH: $target (fuzz/artifacts/$target/)" >&2
        grep -E 'panicked at|^(thread|assertion)|ERROR: libFuzzer|SUMMARY|Test unit written' -A2 "$log" |
            head -30 >&2
    fi
done
exit $status
