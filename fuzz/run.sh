#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer coverage instrumentation on the stable
# toolchain (no sanitizer: Rust code is memory-safe, the oracle is "no panic") and runs
# each for a bounded time.   fuzz/run.sh [SECONDS_PER_TARGET=60] [TARGET...]
# Same instrumentation as `cargo fuzz run --sanitizer none`, without needing cargo-fuzz
# or nightly. Crashes are written to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(config_parse route_match)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/fuzz-target}
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps RUSTFLAGS off build scripts and proc macros (as cargo-fuzz does).
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --bins --target "$triple"
for t in "${targets[@]}"; do
  case $t in config_parse) seeds=corpus/config ;; *) seeds=corpus/$t ;; esac
  work=$CARGO_TARGET_DIR/corpus/$t; mkdir -p "$work" "artifacts/$t"
  echo "== $t for ${secs}s (seeds: $seeds, working corpus: $work)"
  "$CARGO_TARGET_DIR/$triple/release/$t" "$work" "$seeds" -max_total_time="$secs" \
    -artifact_prefix="artifacts/$t/" -max_len=8192 -print_final_stats=1 2>&1 |
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|==[0-9]+== ERROR|thread .* panicked|SUMMARY|Done )' || true
done
crashes=$(find artifacts -type f 2>/dev/null | wc -l)
echo "crash/timeout/oom inputs in fuzz/artifacts: $crashes"
[ "$crashes" = 0 ]
