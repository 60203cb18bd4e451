#!/usr/bin/env bash
# Runs everything CI runs: formatting, lints, every test, and `slotd check` on the
# shipped configs. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
for config in config/slotd.toml config/demo.toml; do
    cargo run --locked --quiet -- check --config "$config"
done
