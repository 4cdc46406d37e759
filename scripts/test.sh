#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), then runs the quality gates
# and every test, unit and end-to-end against real peers on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
# The docker-compose demo: compose schema, hadolint on every Dockerfile, service configs.
scripts/check-compose.sh
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}"
# Fuzzing: every target for a bounded time; fails on a crash, timeout or OOM (README "Fuzzing").
echo "== fuzz (scripts/fuzz.sh)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" scripts/fuzz.sh
