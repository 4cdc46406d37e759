#!/usr/bin/env bash
# Starts the gateway with properties/sipstream.properties (extra arguments are passed on,
# e.g. --set rest_port=9092). Installs the build tools first (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
exec cargo run --release -- "$@"
