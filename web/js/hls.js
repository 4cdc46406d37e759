// hls.html: plays /hls/<stream>/index.m3u8 with hls.js in low-latency mode (natively where
// the browser plays HLS itself), shows latency and buffer, and exposes them to tests as
// window.sipstreamHls.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const { setStatus } = window.sipstream;
  const media = $("media");
  const state = { playing: false, lowLatency: false, latency: null, errors: [] };
  window.sipstreamHls = state;
  let hls = null;
  let timer = null;

  function row(dl, name, value) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  }

  function render() {
    const dl = $("stats");
    dl.replaceChildren();
    const buffered = media.buffered.length
      ? (media.buffered.end(media.buffered.length - 1) - media.currentTime).toFixed(2) + " s"
      : "-";
    state.currentTime = media.currentTime;
    state.audioBytes = media.webkitAudioDecodedByteCount || 0;
    state.videoBytes = media.webkitVideoDecodedByteCount || 0;
    if (hls) {
      state.latency = hls.latency;
      const level = hls.levels[hls.currentLevel >= 0 ? hls.currentLevel : 0];
      state.lowLatency = !!(level && level.details && level.details.partList);
    }
    row(dl, "Position", media.currentTime.toFixed(2) + " s");
    row(dl, "Buffered ahead", buffered);
    row(dl, "Latency", state.latency === null ? "-" : state.latency.toFixed(2) + " s");
    row(dl, "Low-latency parts", state.lowLatency ? "yes" : "no");
    row(dl, "Audio decoded", state.audioBytes + " bytes");
  }

  function stop() {
    if (hls) hls.destroy();
    hls = null;
    media.removeAttribute("src");
    media.load();
    clearInterval(timer);
    state.playing = false;
    $("stop").disabled = true;
    $("play").disabled = false;
    setStatus($("status"), "Stopped");
  }

  function play() {
    const name = $("stream").value.trim();
    if (!name) return;
    stop();
    const url = new URL(window.location.href);
    url.searchParams.set("stream", name);
    history.replaceState(null, "", url);
    // With api_keys set, a stream token (?token= of this page) or the stored API key.
    const token = new URLSearchParams(window.location.search).get("token") ||
      localStorage.getItem("sipstream.apiKey");
    const src = "/hls/" + encodeURIComponent(name) + "/index.m3u8" +
      (token ? "?token=" + encodeURIComponent(token) : "");
    $("playlist").href = src;
    $("playlist").textContent = new URL(src, window.location.href).href;
    setStatus($("status"), "Loading " + name + " …");
    $("play").disabled = true;
    $("stop").disabled = false;
    if (window.Hls && window.Hls.isSupported()) {
      hls = new window.Hls({ lowLatencyMode: true, backBufferLength: 30 });
      hls.on(window.Hls.Events.ERROR, (_, data) => {
        state.errors.push(data.details);
        if (data.fatal) setStatus($("status"), "Error: " + data.details, "error");
      });
      hls.loadSource(src);
      hls.attachMedia(media);
    } else if (media.canPlayType("application/vnd.apple.mpegurl")) {
      media.src = src;
    } else {
      setStatus($("status"), "This browser plays neither HLS nor MSE", "error");
      return;
    }
    media.play().catch(() => {});
    timer = setInterval(render, 500);
  }

  media.addEventListener("playing", () => {
    state.playing = true;
    setStatus($("status"), "Playing " + $("stream").value.trim(), "ok");
  });
  media.addEventListener("ended", () => setStatus($("status"), "The stream ended"));
  $("hls-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    play();
  });
  $("stop").addEventListener("click", stop);

  const initial = new URLSearchParams(window.location.search).get("stream");
  if (initial) {
    $("stream").value = initial;
    play();
  }
})();
