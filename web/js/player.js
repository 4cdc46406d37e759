// player.html: a stream name (or ?stream=NAME, which also starts playing), play/stop,
// volume, a status line and live getStats() numbers.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const { bindApiKeyField, renderStats, setStatus } = window.sipstream;
  bindApiKeyField();

  const media = $("media");
  const player = new WhepPlayer(media, {
    onStatus: (text, kind) => setStatus($("status"), text, kind),
    onStats: (s) => renderStats($("stats"), s),
  });
  renderStats($("stats"), null);

  async function play() {
    const name = $("stream").value.trim();
    if (!name) return;
    const url = new URL(window.location.href);
    url.searchParams.set("stream", name);
    history.replaceState(null, "", url);
    $("play").disabled = true;
    try {
      await player.play(name);
      $("stop").disabled = false;
    } catch (_) {
      $("play").disabled = false;
    }
  }

  $("player-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    play();
  });
  $("stop").addEventListener("click", async () => {
    await player.stop();
    $("stop").disabled = true;
    $("play").disabled = false;
  });
  $("volume").addEventListener("input", () => {
    media.volume = Number($("volume").value);
  });
  window.addEventListener("pagehide", () => player.stop());

  const initial = new URLSearchParams(window.location.search).get("stream");
  if (initial) {
    $("stream").value = initial;
    play();
  }
  window.sipstreamPlayer = player;
})();
