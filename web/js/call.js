// call.html ("SIP as stream"): /rest-api/call/startup with the form's fields, the call's
// status as it changes (polled from /rest-api/call/find), the embedded player started when
// the callee's media arrives, and hang-up (/rest-api/call/terminate).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const { apiHeaders, bindApiKeyField, errorText, renderStats, setStatus } = window.sipstream;
  bindApiKeyField();

  const media = $("media");
  const player = new WhepPlayer(media, {
    onStatus: (text, kind) => setStatus($("status"), text, kind),
    onStats: (s) => renderStats($("stats"), s),
  });
  renderStats($("stats"), null);
  $("volume").addEventListener("input", () => (media.volume = Number($("volume").value)));

  const FINAL = ["FINISH", "FAILED", "BUSY"];
  const MEDIA = ["ESTABLISHED", "RING_MEDIA", "SESSION_PROGRESS"];
  let call = null; // { callId, stream }
  let pollTimer = null;
  let lastStatus = null;

  async function api(path, body) {
    const resp = await fetch("/rest-api" + path, {
      method: "POST",
      headers: apiHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    return resp.json();
  }

  function showCall(c) {
    let text = "Call " + c.callId + ": " + c.status;
    if (c.sipStatus) text += " (SIP " + c.sipStatus + ")";
    if (c.reason) text += " - " + c.reason;
    const kind = FINAL.includes(c.status) ? (c.status === "FINISH" ? "" : "bad") : "ok";
    setStatus($("call-status"), text, kind);
  }

  async function poll() {
    if (!call) return;
    let c;
    try {
      c = (await api("/call/find", { callId: call.callId }))[0];
    } catch (e) {
      setStatus($("call-status"), "Cannot read the call: " + e.message, "bad");
      return;
    }
    showCall(c);
    if (c.status !== lastStatus) {
      lastStatus = c.status;
      if (MEDIA.includes(c.status) && !player.playing) {
        player.play(call.stream).catch(() => {});
      }
      if (FINAL.includes(c.status)) {
        clearInterval(pollTimer);
        pollTimer = null;
        call = null;
        await player.stop();
        $("start").disabled = false;
        $("hangup").disabled = true;
      }
    }
  }

  function formBody() {
    const v = (id) => $(id).value.trim();
    const body = {
      callee: v("callee"),
      sipLogin: v("sipLogin"),
      sipDomain: v("sipDomain"),
      sipPort: v("sipPort") || "5060",
      sipTransport: v("sipTransport"),
      sipRegisterRequired: $("sipRegisterRequired").checked,
      hasAudio: $("hasAudio").checked,
      hasVideo: $("hasVideo").checked,
    };
    for (const id of ["sipAuthenticationName", "sipPassword", "sipOutboundProxy", "toStream"]) {
      if ($(id).value.trim()) body[id] = $(id).value.trim();
    }
    return body;
  }

  $("call-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("start").disabled = true;
    setStatus($("call-status"), "Starting the call ...", "");
    try {
      const c = await api("/call/startup", formBody());
      call = { callId: c.callId, stream: c.toStream || c.streamName || formBody().toStream };
      lastStatus = null;
      showCall(c);
      $("hangup").disabled = false;
      pollTimer = setInterval(poll, 500);
    } catch (e) {
      setStatus($("call-status"), "Cannot start the call: " + e.message, "bad");
      $("start").disabled = false;
    }
  });

  $("hangup").addEventListener("click", async () => {
    if (!call) return;
    $("hangup").disabled = true;
    try {
      await api("/call/terminate", { callId: call.callId });
    } catch (e) {
      setStatus($("call-status"), "Cannot hang up: " + e.message, "bad");
      $("hangup").disabled = false;
    }
    poll();
  });

  window.sipstreamPlayer = player;
})();
