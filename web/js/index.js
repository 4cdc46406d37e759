// index.html: live streams (with links to play them) and calls, refreshed every 2 s.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const { apiHeaders, bindApiKeyField, errorText, setStatus } = window.sipstream;
  bindApiKeyField();

  function cell(row, content) {
    const td = document.createElement("td");
    if (content instanceof Node) td.append(content);
    else td.textContent = content === undefined || content === null ? "" : String(content);
    row.append(td);
  }

  function playLink(name) {
    const span = document.createElement("span");
    const a = document.createElement("a");
    a.href = "player.html?stream=" + encodeURIComponent(name);
    a.textContent = "Play " + name;
    const h = document.createElement("a");
    h.href = "hls.html?stream=" + encodeURIComponent(name);
    h.textContent = "HLS";
    span.append(a, " · ", h);
    return span;
  }

  function fill(tbody, rows, empty, cols) {
    tbody.replaceChildren();
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = cols;
      td.className = "muted";
      td.textContent = empty;
      tr.append(td);
      tbody.append(tr);
    }
    for (const r of rows) tbody.append(r);
  }

  async function get(path) {
    const resp = await fetch("/rest-api" + path, { headers: apiHeaders() });
    if (!resp.ok) throw new Error(await errorText(resp));
    return resp.json();
  }

  async function refresh() {
    try {
      const [streams, calls] = await Promise.all([get("/stream/find_all"), get("/call/find_all")]);
      fill($("streams"), streams.map((s) => {
        const tr = document.createElement("tr");
        cell(tr, s.name);
        cell(tr, s.callId || "");
        cell(tr, s.tracks.map((t) => t.kind + " " + t.codec).join(", ") || "none yet");
        cell(tr, s.tracks.reduce((n, t) => n + t.packets, 0));
        cell(tr, s.readers.map((r) => r.kind).join(", ") || "0");
        cell(tr, playLink(s.name));
        return tr;
      }), "No live stream.", 6);
      fill($("calls"), calls.map((c) => {
        const tr = document.createElement("tr");
        cell(tr, c.callId);
        cell(tr, c.callee);
        cell(tr, c.status);
        cell(tr, c.sipStatus || "");
        const live = !["FINISH", "FAILED", "BUSY"].includes(c.status);
        cell(tr, live && c.toStream ? playLink(c.toStream) : c.toStream || "");
        return tr;
      }), "No call yet.", 5);
      setStatus($("status"), "Updated " + new Date().toLocaleTimeString(), "");
    } catch (e) {
      setStatus($("status"), "Cannot load: " + e.message, "bad");
    }
  }

  refresh();
  setInterval(refresh, 2000);
})();
