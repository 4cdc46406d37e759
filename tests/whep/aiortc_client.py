#!/usr/bin/env python3
"""A WHEP (RFC 9725) player on aiortc, the Python WebRTC stack of many AI voice agents.

It offers recvonly audio AND video (as such agents do), POSTs the offer to URL, applies the
gateway's answer, counts the decoded frames each track receives for --seconds once the peer
connection is connected, DELETEs the session and prints one JSON object on stdout:

  {"status": 201, "location": "/whep/...", "error": null, "connected": true,
   "audio_frames": 200, "audio_loud_frames": 190, "video_frames": 0,
   "tracks": ["audio", "video"], "delete_status": 200, "offer": "...", "answer": "..."}

"error" carries what aiortc raised (e.g. on setRemoteDescription). The exit status is 0 when
the answer was applied and the connection reached "connected", 1 otherwise.

Used by tests/whep.rs; runs by hand too:
  python3 tests/whep/aiortc_client.py http://127.0.0.1:9091/whep/call_stream1 --seconds 5
"""

import argparse
import array
import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


def loud(frame):
    """True when a decoded s16 audio frame is not (near) silence."""
    try:
        samples = array.array("h", bytes(frame.planes[0]))
    except Exception:  # not s16: count it as loud, the frame count still tells
        return True
    return any(abs(s) > 300 for s in samples)


async def consume(track, counts, first):
    from aiortc.mediastreams import MediaStreamError

    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        counts[track.kind] = counts.get(track.kind, 0) + 1
        first.setdefault(track.kind, time.monotonic())
        if track.kind == "audio" and loud(frame):
            counts["audio_loud"] = counts.get("audio_loud", 0) + 1


async def run(args):
    import aioice.ice
    from aiortc import RTCPeerConnection, RTCSessionDescription

    if args.host_address:
        # aioice never offers a loopback candidate; the tests' gateway listens on 127.0.0.1
        # only, and test traffic stays on loopback.
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.host_address]

    out = {
        "status": None,
        "location": None,
        "error": None,
        "connected": False,
        "connection_state": None,
        "audio_frames": 0,
        "audio_loud_frames": 0,
        "video_frames": 0,
        "tracks": [],
        "delete_status": None,
        "offer": None,
        "answer": None,
    }
    counts = {}
    first = {}
    tasks = []
    pc = RTCPeerConnection()
    connected = asyncio.Event()
    failed = asyncio.Event()

    @pc.on("connectionstatechange")
    async def on_state():
        out["connection_state"] = pc.connectionState
        if pc.connectionState == "connected":
            connected.set()
        elif pc.connectionState in ("failed", "closed"):
            failed.set()

    @pc.on("track")
    def on_track(track):
        out["tracks"].append(track.kind)
        tasks.append(asyncio.ensure_future(consume(track, counts, first)))

    location = None
    try:
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        # aiortc gathers every candidate in setLocalDescription: the offer is complete.
        await pc.setLocalDescription(await pc.createOffer())
        out["offer"] = pc.localDescription.sdp
        if args.offer_out:
            with open(args.offer_out, "w", newline="") as f:
                f.write(out["offer"])
        status, headers, body = await asyncio.to_thread(
            http,
            "POST",
            args.url,
            out["offer"].encode(),
            {"Content-Type": "application/sdp"},
        )
        out["status"] = status
        if status != 201:
            out["error"] = f"POST answered {status}: {body}"
            return out
        location = {k.lower(): v for k, v in headers.items()}.get("location")
        out["location"] = location
        out["answer"] = body
        if args.answer_out:
            with open(args.answer_out, "w", newline="") as f:
                f.write(body)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        done, _ = await asyncio.wait(
            [
                asyncio.ensure_future(connected.wait()),
                asyncio.ensure_future(failed.wait()),
            ],
            timeout=args.connect_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not connected.is_set():
            out["error"] = f"not connected (state {pc.connectionState})"
            return out
        out["connected"] = True
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        out["seconds"] = round(time.monotonic() - started, 2)
        if "audio" in first:
            out["first_audio_after_s"] = round(first["audio"] - started, 2)
    except Exception as e:  # what aiortc raised is the result
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        out["audio_frames"] = counts.get("audio", 0)
        out["audio_loud_frames"] = counts.get("audio_loud", 0)
        out["video_frames"] = counts.get("video", 0)
        out["connection_state"] = pc.connectionState
        if location:
            url = urllib.parse.urljoin(args.url, location)
            out["delete_status"], _, _ = await asyncio.to_thread(http, "DELETE", url)
        await pc.close()
        for t in tasks:
            t.cancel()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the WHEP endpoint, http://HOST:PORT/whep/STREAM")
    p.add_argument("--seconds", type=float, default=4.0, help="how long to count frames")
    p.add_argument("--connect-timeout", type=float, default=15.0)
    p.add_argument(
        "--host-address",
        default=None,
        help="offer only this host candidate address (e.g. 127.0.0.1)",
    )
    p.add_argument("--offer-out", help="write the offer SDP here")
    p.add_argument("--answer-out", help="write the answer SDP here")
    args = p.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps(out), flush=True)
    sys.exit(0 if out["connected"] and not out["error"] else 1)


if __name__ == "__main__":
    main()
