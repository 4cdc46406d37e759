#!/usr/bin/python3
"""Minimal RTSP test server (GStreamer gst-rtsp-server via PyGObject) on 127.0.0.1.

Usage: rtsp_server.py [--port N] [--mount /test] [--mode audio|av]
                      [--audio pcmu|pcma|opus] [--user U --password P]

Run with /usr/bin/python3 (Debian python3-gi is not visible to a pyenv/venv python).
--port 0 picks a free port. Prints "READY <port>" (flushed) once listening; runs until
SIGTERM/SIGINT. Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0
gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
"""
import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

AUDIO = {
    # 20 ms packets, like a SIP leg: samplesperbuffer = rate / 50.
    "pcmu": "samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 ! audioconvert ! mulawenc ! rtppcmupay name=pay0 pt=0",
    "pcma": "samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 ! audioconvert ! alawenc ! rtppcmapay name=pay0 pt=8",
    "opus": "samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=1 ! audioconvert ! opusenc ! rtpopuspay name=pay0 pt=111",
}
VIDEO = (
    "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 "
    "! video/x-h264,profile=constrained-baseline "
    "! rtph264pay name=pay1 pt=96 config-interval=1"
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--mount", default="/test")
    ap.add_argument("--mode", choices=["audio", "av"], default="av")
    ap.add_argument("--audio", choices=sorted(AUDIO), default="pcmu")
    ap.add_argument("--user")
    ap.add_argument("--password")
    args = ap.parse_args()

    Gst.init(None)
    audio = "audiotestsrc freq=440 is-live=true " + AUDIO[args.audio]
    launch = "( " + audio + (" " + VIDEO if args.mode == "av" else "") + " )"

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)  # one pipeline for all clients of this mount
    # default protocols: UDP, UDP multicast and TCP-interleaved

    if args.user:
        auth = GstRtspServer.RTSPAuth()
        # Digest (what cameras use; Basic is also accepted by retina's http-auth).
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_digest(args.user, args.password or "", token)
        server.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        perms.add_role_from_structure(Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
        factory.set_permissions(perms)

    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print("ERROR could not listen on port %d" % args.port, file=sys.stderr, flush=True)
        sys.exit(1)

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print("READY %d" % server.get_bound_port(), flush=True)
    loop.run()


if __name__ == "__main__":
    main()
