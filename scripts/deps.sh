#!/usr/bin/env bash
# Installs what building and testing sipstream needs, idempotently.
#   scripts/deps.sh build   -> build tools only (cmake for libopus)
#   scripts/deps.sh test    -> build tools + the real peers the tests drive (and aiortc, a
#                              WHEP player, from PyPI into $SIPSTREAM_PYTHON, default python3)
#   scripts/deps.sh bench   -> build tools + what scripts/bench.sh drives (sipp, rtpengine, perf)
# The container images of the docker-compose demo install through the same script:
#   scripts/deps.sh runtime  -> what the gateway binary needs at run time (Dockerfile)
#   scripts/deps.sh kamailio -> the demo's registrar/proxy (deploy/compose/kamailio)
#   scripts/deps.sh rtmp     -> the demo's RTMP server, nginx-rtmp (deploy/compose/rtmp)
#   scripts/deps.sh callee   -> the demo's callee, sipp (deploy/compose/callee)
#   scripts/deps.sh lint     -> the compose validator used by scripts/check-compose.sh
# These purposes install no build tools: the images stay small.
set -euo pipefail
what=${1:-test}
build_pkgs=(cmake pkg-config)
test_pkgs=(sip-tester kamailio kamailio-tls-modules baresip-core dnsmasq-base ffmpeg curl iproute2 libxml2-utils python3 chromium chromium-driver nginx libnginx-mod-rtmp
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
  prometheus)
# (kamailio-tls-modules: the TLS listener of tests/sip_tls.rs; the GStreamer packages: the
# RTSP server of tests/rtsp_pull.rs; prometheus: the dashboard test of tests/browser.rs.)
# Not in `test`: CI does not spend its time on the benchmark's peers.
bench_pkgs=(sip-tester rtpengine-daemon linux-perf)
# The binary links only libc, libm and libgcc_s (libopus is built in); CA certificates for
# https webhooks and wss:// media streams, curl for the image's HEALTHCHECK.
runtime_pkgs=(ca-certificates curl)
kamailio_pkgs=(kamailio)
rtmp_pkgs=(nginx libnginx-mod-rtmp)
callee_pkgs=(sip-tester)
# Debian's docker-compose 1.x validates a compose file without a Docker engine.
lint_pkgs=(docker-compose)
case "$what" in
  runtime) pkgs=("${runtime_pkgs[@]}") ;;
  kamailio) pkgs=("${kamailio_pkgs[@]}") ;;
  rtmp) pkgs=("${rtmp_pkgs[@]}") ;;
  callee) pkgs=("${callee_pkgs[@]}") ;;
  lint) pkgs=("${lint_pkgs[@]}") ;;
  *)
    pkgs=("${build_pkgs[@]}")
    [ "$what" = test ] && pkgs+=("${test_pkgs[@]}")
    [ "$what" = bench ] && pkgs+=("${bench_pkgs[@]}")
    ;;
esac
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
# The aiortc WHEP player of tests/whep.rs (tests/whep/aiortc_client.py): a PyPI package, not a
# Debian one. Installed into the Python the test runs, `$SIPSTREAM_PYTHON` or else `python3`
# on PATH (the machine's CPython with pip); skipped when that Python already imports it.
if [ "$what" = test ]; then
  aiortc_version=1.16.0
  py=${SIPSTREAM_PYTHON:-python3}
  if ! "$py" -c 'import aiortc' 2>/dev/null; then
    echo "deps: installing aiortc==$aiortc_version into $(command -v "$py")"
    "$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      "aiortc==$aiortc_version"
  fi
fi
