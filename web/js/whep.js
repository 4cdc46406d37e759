// A small WHEP (RFC 9725) player used by player.html and call.html.
// Plain script, no build step: defines window.WhepPlayer and window.sipstream helpers.
(function () {
  "use strict";

  const KEY_STORAGE = "sipstream.apiKey";

  // Headers for the gateway's API: the API key, when the gateway is configured with one.
  // A stream token in the page's URL (?token=, from /rest-api/stream/token) stands in for
  // the API key: players get a link, not a key.
  const PAGE_TOKEN = new URLSearchParams(window.location.search).get("token");

  function apiHeaders(extra) {
    const h = Object.assign({}, extra || {});
    const key = PAGE_TOKEN || localStorage.getItem(KEY_STORAGE);
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  // Wires an optional "API key" input (id api-key) to localStorage.
  function bindApiKeyField() {
    const input = document.getElementById("api-key");
    if (!input) return;
    input.value = localStorage.getItem(KEY_STORAGE) || "";
    input.addEventListener("change", () => {
      if (input.value.trim()) localStorage.setItem(KEY_STORAGE, input.value.trim());
      else localStorage.removeItem(KEY_STORAGE);
    });
  }

  async function errorText(resp) {
    const text = await resp.text();
    try {
      const j = JSON.parse(text);
      return resp.status + " " + (j.message || text);
    } catch (_) {
      return resp.status + " " + (text || resp.statusText);
    }
  }

  function waitForIceGathering(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (pc.iceGatheringState === "complete") {
          pc.removeEventListener("icegatheringstatechange", done);
          resolve();
        }
      };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, ms);
    });
  }

  class WhepPlayer {
    // media: a <video> (or <audio>) element; onStatus(text, kind); onStats(stats).
    constructor(media, { onStatus, onStats } = {}) {
      this.media = media;
      this.onStatus = onStatus || (() => {});
      this.onStats = onStats || (() => {});
      this.pc = null;
      this.location = null;
      this.timer = null;
      this.stats = null;
    }

    get playing() {
      return this.pc !== null;
    }

    async play(stream) {
      await this.stop();
      this.onStatus("Connecting to " + stream + " ...", "");
      let iceServers = [];
      try {
        const r = await fetch("/webrtc/config");
        if (r.ok) iceServers = (await r.json()).iceServers || [];
      } catch (_) {
        // No config endpoint: host candidates only.
      }
      const pc = new RTCPeerConnection({ iceServers });
      this.pc = pc;
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
      const remote = new MediaStream();
      pc.ontrack = (ev) => {
        remote.addTrack(ev.track);
        this.media.srcObject = remote;
        this.media.play().catch((e) => this.onStatus("Press play to hear the call (" + e.message + ")", ""));
      };
      pc.onconnectionstatechange = () => {
        const s = pc.connectionState;
        if (s === "connected") this.onStatus("Playing " + stream, "ok");
        else if (s === "failed") this.onStatus("Connection failed", "bad");
        else if (s === "disconnected") this.onStatus("Connection interrupted ...", "bad");
        else this.onStatus("Connection: " + s, "");
      };
      try {
        await pc.setLocalDescription(await pc.createOffer());
        await waitForIceGathering(pc, 2000);
        const resp = await fetch("/whep/" + encodeURIComponent(stream), {
          method: "POST",
          headers: apiHeaders({ "Content-Type": "application/sdp" }),
          body: pc.localDescription.sdp,
        });
        if (resp.status !== 201) throw new Error(await errorText(resp));
        this.location = new URL(resp.headers.get("Location"), window.location.href).toString();
        await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
      } catch (e) {
        this.pc = null;
        pc.close();
        this.onStatus("Cannot play " + stream + ": " + e.message, "bad");
        throw e;
      }
      this.timer = setInterval(() => this.poll(), 1000);
    }

    async stop() {
      if (this.timer) clearInterval(this.timer);
      this.timer = null;
      const pc = this.pc;
      const location = this.location;
      this.pc = null;
      this.location = null;
      if (pc) pc.close();
      if (location) {
        try {
          await fetch(location, { method: "DELETE", headers: apiHeaders() });
        } catch (_) {
          // The gateway also removes players that stop answering ICE consent checks.
        }
      }
      if (this.media.srcObject) this.media.srcObject = null;
      if (pc) this.onStatus("Stopped", "");
    }

    // Reads getStats(): inbound audio/video packets, jitter, codec, audio level.
    async poll() {
      if (!this.pc) return;
      const report = await this.pc.getStats();
      const codecs = {};
      report.forEach((s) => {
        if (s.type === "codec") codecs[s.id] = s;
      });
      const out = { state: this.pc.connectionState, audio: null, video: null };
      report.forEach((s) => {
        if (s.type !== "inbound-rtp") return;
        const c = codecs[s.codecId];
        const entry = {
          packetsReceived: s.packetsReceived || 0,
          packetsLost: s.packetsLost || 0,
          bytesReceived: s.bytesReceived || 0,
          jitterMs: s.jitter !== undefined ? s.jitter * 1000 : null,
          codec: c ? c.mimeType.replace(/^(audio|video)\//, "") + "/" + c.clockRate : null,
        };
        if (s.kind === "audio") {
          entry.audioLevel = s.audioLevel || 0;
          entry.totalAudioEnergy = s.totalAudioEnergy || 0;
          out.audio = entry;
        } else if (s.kind === "video") {
          entry.framesDecoded = s.framesDecoded || 0;
          entry.width = s.frameWidth || 0;
          entry.height = s.frameHeight || 0;
          out.video = entry;
        }
      });
      this.stats = out;
      window.whepStats = out;
      this.onStats(out);
    }
  }

  // Fills a <dl class="stats"> from WhepPlayer stats.
  function renderStats(dl, s) {
    const a = (s && s.audio) || {};
    const v = (s && s.video) || null;
    const rows = [
      ["Connection", s ? s.state : "-"],
      ["Audio codec", a.codec || "-"],
      ["Audio packets", a.packetsReceived !== undefined ? String(a.packetsReceived) : "-"],
      ["Packets lost", a.packetsLost !== undefined ? String(a.packetsLost) : "-"],
      ["Jitter", a.jitterMs !== undefined && a.jitterMs !== null ? a.jitterMs.toFixed(1) + " ms" : "-"],
      ["Audio level", a.audioLevel !== undefined ? a.audioLevel.toFixed(3) : "-"],
    ];
    if (v && v.packetsReceived > 0) {
      rows.push(["Video", (v.codec || "?") + ", " + v.width + "x" + v.height + ", " + v.framesDecoded + " frames"]);
    }
    dl.replaceChildren();
    for (const [k, val] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = val;
      dl.append(dt, dd);
    }
  }

  function setStatus(el, text, kind) {
    el.textContent = text;
    el.className = "status" + (kind ? " " + kind : "");
  }

  window.WhepPlayer = WhepPlayer;
  window.sipstream = { apiHeaders, bindApiKeyField, errorText, renderStats, setStatus };
})();
