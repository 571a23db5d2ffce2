// bender's dashboard: the API's own data, read with the API's own credentials. No framework,
// no external resource; text goes in with textContent, never as HTML.
"use strict";

// `choice`: the backend picked in each frontend's switch menu, kept across re-renders.
// `stream` aborts the event stream, `retry` ends the pause before it reconnects.
const state = {
  token: sessionStorage.getItem("bender-token") || "", data: null, reloadTimer: null, choice: {},
  stream: null, retry: null, restart: false, lastId: null,
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({ headers: headers() }, options || {});
  const r = await fetch(path, opts);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { message: text }; }
  if (!r.ok) {
    const e = new Error((body && body.message) || r.statusText);
    e.status = r.status;
    e.code = body && body.code;
    throw e;
  }
  return body;
}

function problem(text) {
  const p = document.getElementById("problem");
  p.hidden = !text;
  p.textContent = text || "";
}

function explain(e) {
  if (e.status === 401 || e.status === 403) {
    return "This node needs an API token: enter one above (read scope to look, admin to switch). " + e.message;
  }
  return e.message || String(e);
}

async function load() {
  try {
    const [status, members, fleet, frontends, backends, registrations] = await Promise.all([
      api("/v1/status"), api("/v1/members"), api("/v1/fleet"),
      api("/v1/frontends"), api("/v1/backends"), api("/v1/registrations"),
    ]);
    state.data = { status, members, fleet, frontends, backends, registrations };
    problem("");
    render();
  } catch (e) {
    problem(explain(e));
  }
}

function scheduleLoad() {
  if (state.reloadTimer) return;
  state.reloadTimer = setTimeout(() => { state.reloadTimer = null; load(); }, 150);
}

function pill(text, cls) {
  return el("span", { class: "pill " + (cls || text) }, text);
}

function offset(ms) {
  if (ms === null || ms === undefined) return "?";
  return (ms > 0 ? "+" : "") + ms + " ms";
}

function render() {
  const d = state.data;
  document.getElementById("node").textContent = "on " + d.status.node_id;
  renderFleet(d);
  renderTraffic(d);
}

function renderFleet(d) {
  const members = new Map(d.members.map((m) => [m.node_id, m]));
  const c = d.fleet.counts;
  const summary = document.getElementById("fleet-summary");
  summary.textContent =
    `${c.synced} synced, ${c.pending} pending, ${c.stale} stale, ${c.error} error, as ${d.fleet.observer} sees it (view ${d.fleet.view.slice(0, 8)})`;
  summary.dataset.view = d.fleet.view;
  const body = document.querySelector("#fleet tbody");
  body.replaceChildren(...d.fleet.nodes.map((n) => {
    const m = members.get(n.node_id) || {};
    const configs = ((n.record && n.record.templates) || []).map((t) => t.config || "-").join(", ") || "-";
    return el("tr", { "data-node": n.node_id },
      el("td", {}, n.node_id, n.is_self ? el("span", { class: "muted" }, " (this)") : null,
        " ", pill(m.live === false ? "unreachable" : "live", m.live === false ? "dead" : "live")),
      el("td", { class: "state" }, pill(n.state)),
      el("td", {}, offset(m.clock_offset_ms)),
      el("td", {}, configs),
      el("td", { class: "message" }, n.message || ""));
  }));
}

function liveOf(d, app, version) {
  return d.registrations.filter((r) => r.app === app && r.version === version);
}

function haproxyView(d, backend, host, port) {
  for (const t of d.status.templates || []) {
    for (const s of t.servers || []) {
      if (s.backend === backend && s.address === `${host}:${port}`) return s.status;
    }
  }
  return null;
}

function renderTraffic(d) {
  const backends = new Map(d.backends.map((b) => [b.name, b]));
  const box = document.getElementById("frontends");
  if (d.frontends.length === 0) {
    box.replaceChildren(el("p", { class: "muted" }, "No frontend yet."));
    return;
  }
  box.replaceChildren(...d.frontends.map((f) => {
    const be = backends.get(f.backend);
    const choices = d.backends.filter((b) => b.name !== f.backend);
    const select = el("select", {
      "data-frontend": f.name, "aria-label": `backend for ${f.name}`,
      onchange: () => { state.choice[f.name] = select.value; },
    }, choices.map((b) => el("option", { value: b.name }, `${b.name} (${b.app}@${b.version})`)));
    if (choices.some((b) => b.name === state.choice[f.name])) select.value = state.choice[f.name];
    const button = el("button", {
      class: "primary", "data-switch": f.name, disabled: choices.length === 0,
      onclick: () => confirmSwitch("frontends", f.name, f.backend, select.value, d),
    }, "Switch");
    return el("div", { class: "frontend", "data-frontend": f.name },
      el("div", { class: "row" }, el("strong", {}, f.name), el("span", { class: "muted" }, `${f.mode || "http"} on ${f.bind}`),
        el("span", {}, "→ ", el("strong", { class: "current-backend" }, f.backend)),
        choices.length ? el("span", { class: "switch row" }, select, button) : null),
      be ? renderBackend(d, be) : el("p", { class: "problem" }, `backend ${f.backend} does not exist`));
  }));
}

function renderBackend(d, be) {
  const servers = liveOf(d, be.app, be.version);
  return el("div", { class: "backend" },
    el("div", { class: "row" }, el("span", {}, `${be.name}: ${be.app}@${be.version}, ${be.balance || "roundrobin"}`),
      el("span", { class: "muted" }, `${servers.length} live server${servers.length === 1 ? "" : "s"}`)),
    el("ul", { class: "servers" }, servers.map((r) => {
      const view = haproxyView(d, be.name, r.host, r.port);
      return el("li", { "data-server": `${r.app}@${r.version} ${r.host}:${r.port}` },
        `${r.host}:${r.port} `, view ? pill(view) : el("span", { class: "muted" }, "(HAProxy's view unknown)"));
    })));
}

function confirmSwitch(kind, name, from, to, d) {
  const target = d.backends.find((b) => b.name === to);
  if (!target) return;
  const live = liveOf(d, target.app, target.version).length;
  const dialog = document.getElementById("confirm");
  const force = document.getElementById("force");
  const ok = document.getElementById("confirm-ok");
  document.getElementById("confirm-text").textContent =
    `Switch ${name} from ${from} to ${to}? ${to} serves ${target.app}@${target.version}, which has ` +
    `${live} live server${live === 1 ? "" : "s"}.` + (live === 0 ? " Its traffic would fail." : "");
  document.getElementById("force-row").hidden = live !== 0;
  force.checked = false;
  ok.disabled = live === 0;
  force.onchange = () => { ok.disabled = !force.checked; };
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    try {
      const r = await api(`/v1/${kind}/${encodeURIComponent(name)}/switch`, {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ backend: to, force: live === 0 && force.checked }),
      });
      addEvent(`switched ${name}: ${r.from} → ${r.to} (${r.live_servers} live)`);
      load();
    } catch (e) {
      problem(explain(e));
    }
  };
  dialog.returnValue = "";
  dialog.showModal();
}

function addEvent(text) {
  const list = document.getElementById("events");
  list.prepend(el("li", {}, new Date().toLocaleTimeString() + " " + text));
  while (list.children.length > 100) list.lastChild.remove();
}

function describe(kind, data) {
  const r = data.registration;
  if (r) return `${kind} ${r.app}@${r.version} ${r.host}:${r.port}` + (data.reason ? ` (${data.reason})` : "");
  if (data.backend) return `${kind} ${data.backend.name} → ${data.backend.app}@${data.backend.version}`;
  if (data.frontend) return `${kind} ${data.frontend.name} → ${data.frontend.backend}`;
  if (data.name) return `${kind} ${data.name}`;
  return kind;
}

// Server-sent events over fetch (EventSource cannot send the token); reconnects with a pause.
async function follow() {
  const conn = document.getElementById("conn");
  for (;;) {
    state.stream = new AbortController();
    try {
      // After a break, resume where the stream stopped (the node resends what was missed, or
      // says `resync` when it cannot).
      const extra = { Accept: "text/event-stream" };
      if (state.lastId) extra["Last-Event-ID"] = state.lastId;
      const r = await fetch("/v1/events", {
        headers: headers(extra),
        signal: state.stream.signal,
      });
      if (!r.ok) throw Object.assign(new Error("events: HTTP " + r.status), { status: r.status });
      conn.textContent = "live";
      conn.className = "pill live";
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let at;
        while ((at = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, at);
          buf = buf.slice(at + 2);
          let kind = "message", data = "";
          for (const line of frame.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("id:")) state.lastId = line.slice(3).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (!data) continue;
          if (kind === "resync") { addEvent("resync: events were missed, reloading"); scheduleLoad(); continue; }
          try { addEvent(describe(kind, JSON.parse(data))); } catch (_) { addEvent(kind); }
          scheduleLoad();
        }
      }
    } catch (e) {
      if (e.status === 401 || e.status === 403) problem(explain(e));
    }
    conn.textContent = "reconnecting…";
    conn.className = "pill PENDING";
    // Again in 2 s, or at once when a new token is given.
    if (!state.restart) await new Promise((ok) => { state.retry = ok; setTimeout(ok, 2000); });
    state.restart = false;
  }
}

document.getElementById("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("bender-token", state.token);
  load();
  // The event stream starts over with the new token.
  state.restart = true;
  if (state.stream) state.stream.abort();
  if (state.retry) state.retry();
});

load();
follow();
setInterval(load, 2000);
