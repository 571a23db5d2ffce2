#!/usr/bin/env bash
# Runs every fuzz target for a while: fuzz/run.sh [SECONDS per target, default 60].
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer's sanitizer flags are nightly-only;
# RUSTC_BOOTSTRAP=1 lets the machine's stable toolchain accept them. Corpora are kept in
# fuzz/corpus/<target> (not committed) so later runs start from what earlier ones found.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
export RUSTC_BOOTSTRAP=1
for target in request peer_record; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${secs}s"
  cargo fuzz run --release "$target" "corpus/$target" -- \
    -max_total_time="$secs" -max_len=4096 -print_final_stats=1 2>&1 \
    | grep -E "^(#[0-9]+ *DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|INFO: Running|Done )" || true
  # cargo fuzz exits non-zero when it finds a crash; grep above must not hide that.
  test "${PIPESTATUS[0]}" -eq 0
done
