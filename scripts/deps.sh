#!/usr/bin/env bash
# Installs what building and testing sipstream needs, idempotently.
#   scripts/deps.sh build   -> build tools only (cmake for libopus)
#   scripts/deps.sh test    -> build tools + the real peers the tests drive
#   scripts/deps.sh bench   -> build tools + what scripts/bench.sh drives (sipp, rtpengine, perf)
set -euo pipefail
what=${1:-test}
build_pkgs=(cmake pkg-config)
test_pkgs=(sip-tester kamailio baresip-core dnsmasq-base ffmpeg curl iproute2 libxml2-utils python3 chromium chromium-driver nginx libnginx-mod-rtmp)
# Not in `test`: CI does not spend its time on the benchmark's peers.
bench_pkgs=(sip-tester rtpengine-daemon linux-perf)
pkgs=("${build_pkgs[@]}")
[ "$what" = test ] && pkgs+=("${test_pkgs[@]}")
[ "$what" = bench ] && pkgs+=("${bench_pkgs[@]}")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
