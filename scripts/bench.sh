#!/usr/bin/env bash
# Benchmarks the release gateway on 127.0.0.1 against sipp, a minimal UDP relay and rtpengine
# (README "Benchmarks"). Arguments go to sipstream-bench, e.g.
#   scripts/bench.sh --quick
#   scripts/bench.sh --steps calls --calls 500 --readers 1 --hold 30 --out /tmp/b.json
#   scripts/bench.sh --quick --steps agents --calls 100,500   # media streams (issue 17) alone
#   scripts/bench.sh --quick --steps exchanges --calls 100,250,500   # media exchanges alone
# The default steps include `agents` (≈ 1 min per --calls count with --quick, 30 s windows
# and ≈ 2 min per count without) and `exchanges` (fetch_from_uri and send_to_uri: ≈ 1 min
# per count with --quick, ≈ 2.5 min without; `--exchange-kinds fetch` for one kind).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh bench
# The load generator and the gateway open thousands of sockets (RTP pairs, SIPREC forks).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Big socket buffers for the sinks and SIP sockets (SO_RCVBUF is capped by rmem_max).
if [ "$(id -u)" -eq 0 ]; then
  sysctl -q -w net.core.rmem_max=33554432 net.core.wmem_max=33554432 2>/dev/null || true
fi
cargo build --release --bin sipstream --bin sipstream-bench
exec target/release/sipstream-bench "$@"
