#!/usr/bin/env bash
# Fuzzing: installs cargo-fuzz (idempotent), seeds fuzz/corpus/<target>/ from the recorded
# fixtures, the OpenAPI examples and fuzz/seeds/<target>/, builds every target once, then runs
# each for FUZZ_SECONDS (default 30). Fails on any crash, timeout or OOM and names the
# artifact. One summary line per target: seconds, executions, corpus size, crashes.
#
#   FUZZ_SECONDS=20 scripts/fuzz.sh           # every target (the CI step)
#   FUZZ_TARGETS="sdp rtp" scripts/fuzz.sh    # some of them
#   FUZZ_TESTDATA=/path/to/testdata           # more seed files (e.g. rfc4475/*.dat), optional
#
# fuzz/corpus/ and fuzz/artifacts/ are git-ignored; libFuzzer's logs go to fuzz/target/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
# cargo-fuzz passes nightly flags (-Zsanitizer=address); the toolchain is stable.
export RUSTC_BOOTSTRAP=1

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== cargo install cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Copies seed files into a target's corpus (existing copies are kept: idempotent).
seed() {
    local target="$1" f
    shift
    mkdir -p "fuzz/corpus/$target"
    for f in "$@"; do
        [ -f "$f" ] || continue
        cp -n "$f" "fuzz/corpus/$target/seed-$(basename "$(dirname "$f")")-$(basename "$f")"
    done
}

echo "== seeding fuzz/corpus/"
shopt -s nullglob
testdata=(tests/fixtures)
[ -n "${FUZZ_TESTDATA:-}" ] && [ -d "$FUZZ_TESTDATA" ] && testdata+=("$FUZZ_TESTDATA")
for d in "${testdata[@]}"; do
    seed sip_message "$d"/rfc4475/*.dat "$d"/rfc5118/*.sip
    for t in sdp siprec_body whep_offer rtsp_source; do
        seed "$t" "$d"/*.sdp
    done
done
for t in "${targets[@]}"; do
    seed "$t" fuzz/seeds/"$t"/*
done
seed sdp fuzz/seeds/whep_offer/* fuzz/seeds/siprec_body/*.sdp
seed whep_offer fuzz/seeds/siprec_body/*.sdp
seed properties properties/*.properties
# Every request example of the OpenAPI document, as a REST body and as a JSON-RPC request.
if command -v python3 >/dev/null && [ -f openapi/openapi.json ]; then
    mkdir -p fuzz/corpus/rest_json fuzz/corpus/whep_offer
    python3 - <<'EOF'
import json, os
doc = json.load(open("openapi/openapi.json"))
for path, ops in doc["paths"].items():
    for verb, op in ops.items():
        for ctype, c in op.get("requestBody", {}).get("content", {}).items():
            if "example" not in c:
                continue
            name = path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
            ex = c["example"]
            if ctype == "application/json":
                method = path.removeprefix("/rest-api/")
                rpc = {"jsonrpc": "2.0", "id": 1, "method": method, "params": ex}
                for n, v in [(name, ex), (name + "-jsonrpc", rpc)]:
                    p = f"fuzz/corpus/rest_json/seed-openapi-{n}.json"
                    if not os.path.exists(p):
                        open(p, "w").write(json.dumps(v))
            elif ctype == "application/sdp" and isinstance(ex, str):
                p = f"fuzz/corpus/whep_offer/seed-openapi-{name}.sdp"
                if not os.path.exists(p):
                    open(p, "w").write(ex)
EOF
fi
# Small sound files for the decoder, when ffmpeg is there.
if command -v ffmpeg >/dev/null; then
    mkdir -p fuzz/corpus/sound
    for spec in "wav:-ar 8000 -c:a pcm_mulaw" "wav:-ar 16000 -c:a pcm_s16le" "mp3:-ar 22050 -b:a 32k" "ogg:-ar 48000 -c:a libopus -b:a 16k"; do
        ext="${spec%%:*}" args="${spec#*:}"
        out="fuzz/corpus/sound/seed-tone-${args//[^a-z0-9]/}.$ext"
        [ -f "$out" ] && continue
        # shellcheck disable=SC2086 # args are words on purpose
        ffmpeg -loglevel error -y -f lavfi -i "sine=frequency=440:duration=0.1" $args "$out" || true
    done
fi

echo "== cargo fuzz build (release, debug assertions, AddressSanitizer)"
cargo fuzz build

mkdir -p fuzz/target/logs
failed=()
summary=()
for t in "${targets[@]}"; do
    log="fuzz/target/logs/$t.log"
    echo "== cargo fuzz run $t (${seconds}s)"
    start=$(date +%s)
    status=ok
    if ! cargo fuzz run "$t" -- -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        status=FAILED
    fi
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\).*DONE.*/\1/p' "$log" | tail -n1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
    crashes=0
    if [ "$status" != ok ]; then
        crashes=1
        tail -n 40 "$log"
        echo "!! $t failed: artifact ${artifact:-none (see $log)}"
        [ -n "$artifact" ] && echo "!! reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t $artifact"
        failed+=("$t")
    fi
    line=$(printf '%-14s %5ss %12s execs %6s corpus %2s crashes %s' \
        "$t" "$took" "${execs:-?}" "$corpus" "$crashes" "${artifact:-}")
    echo "$line"
    summary+=("$line")
done

echo "== fuzz summary (FUZZ_SECONDS=$seconds)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]}"
    exit 1
fi
