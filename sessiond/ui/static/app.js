// sessiond operator dashboard. Plain JavaScript, no build step, no external resources.
//
// Every poll interval (the server says how long, `server.poll_interval_ms`) the page fetches three
// JSON endpoints in parallel — /api/v1/overview, one page of /api/v1/workers and one page of
// /api/v1/sessions — and never starts a poll before the previous one ended. Data is written with
// textContent only (names come from callers and workers). The bearer token, when the server asks
// for one, lives in a variable of this tab and nowhere else.
"use strict";

(() => {
  const PAGE_SIZE = 50;
  const SESSIONS_PATH = "/api/v1/sessions";
  const WORKERS_PATH = "/api/v1/workers";

  const state = {
    token: null,
    paused: false,
    pollMs: 1000,
    timer: null,
    polling: false,
    needsLogin: false,
    workers: { cursor: "", next: "", queue: "" },
    sessions: { cursor: "", next: "", filters: {} },
    causesFilled: false,
  };

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ small helpers

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "class") node.className = value;
        else if (key === "text") node.textContent = value;
        else if (key === "onclick") node.addEventListener("click", value);
        else if (key.startsWith("data-")) node.setAttribute(key, value);
        else node.setAttribute(key, value === true ? "" : value);
      }
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  const short = (id) => (id && id.length > 12 ? id.slice(0, 8) + "…" : id || "–");

  function localTime(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
  }

  function resourceNames(...maps) {
    const names = new Set();
    for (const m of maps) for (const k of Object.keys(m || {})) names.add(k);
    // "sessions" first, then the rest by name: per-resource capacities (issue 11) slot in here.
    return [...names].sort((a, b) => (a === "sessions" ? -1 : b === "sessions" ? 1 : a.localeCompare(b)));
  }

  function bars(capacity, used) {
    const box = el("div", { class: "bars" });
    for (const name of resourceNames(capacity, used)) {
      const cap = capacity[name] || 0;
      const use = used[name] || 0;
      const bar = el("span");
      bar.style.width = `${cap > 0 ? Math.min(100, (100 * use) / cap) : 0}%`;
      box.append(el("div", { class: "bar-row" },
        el("span", { text: `${name} ${use} / ${cap}` }),
        el("div", { class: `bar${cap > 0 && use >= cap ? " full" : ""}`, "aria-hidden": "true" }, bar)));
    }
    if (!box.childNodes.length) box.append(el("span", { class: "muted", text: "–" }));
    return box;
  }

  function amountText(map) {
    const names = resourceNames(map);
    return names.length ? names.map((n) => `${n} ${map[n]}`).join(", ") : "0";
  }

  function causeClass(cause) {
    return ["WORKER_LOST", "HEARTBEAT_TIMEOUT", "EXECUTION_TIMEOUT", "WORKER_SHUTDOWN", "CALLER_LOST"]
      .includes(cause) ? `cause-${cause}` : "cause-other";
  }

  // Rows keyed by id. A row is rebuilt only when its data changed (ages excluded), so a focused
  // button keeps its focus across polls; ages are refreshed in place.
  function syncRows(tbody, items, keyOf, render, ages) {
    const existing = new Map();
    for (const tr of tbody.rows) existing.set(tr.dataset.key, tr);
    let previous = null;
    for (const item of items) {
      const key = keyOf(item);
      let tr = existing.get(key);
      existing.delete(key);
      const signature = JSON.stringify(item, (k, v) => (k.endsWith("age_s") ? undefined : v));
      if (!tr) {
        tr = el("tr", { "data-key": key });
      }
      if (tr.dataset.sig !== signature) {
        tr.replaceChildren(...render(item).map(([label, cls, content]) => {
          const td = el("td", { "data-label": label, class: cls });
          td.append(content instanceof Node ? content : document.createTextNode(String(content)));
          return td;
        }));
        tr.dataset.sig = signature;
      }
      for (const [cls, text] of Object.entries(ages(item))) {
        const td = tr.querySelector(`td.${cls}`);
        if (td && td.textContent !== text) td.textContent = text;
      }
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (wanted !== tr) tbody.insertBefore(tr, wanted);
      previous = tr;
    }
    for (const tr of existing.values()) tr.remove();
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, reason, message) {
      super(message);
      this.status = status;
      this.reason = reason;
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(path, { ...options, headers, cache: "no-store", credentials: "omit" });
    } catch (err) {
      throw new ApiError(0, "NETWORK", "the server cannot be reached");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const e = (body && body.error) || {};
      throw new ApiError(response.status, e.reason || String(response.status), e.message || response.statusText);
    }
    return body;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
    const s = q.toString();
    return s ? `?${s}` : "";
  }

  // ------------------------------------------------------------------ polling

  async function poll() {
    if (state.polling) return;
    state.polling = true;
    try {
      const [overview, workers, sessions] = await Promise.all([
        api("/api/v1/overview"),
        api(WORKERS_PATH + query({ page_size: PAGE_SIZE, page_token: state.workers.cursor,
          task_queue: state.workers.queue })),
        api(SESSIONS_PATH + query({ page_size: PAGE_SIZE, page_token: state.sessions.cursor,
          ...state.sessions.filters })),
      ]);
      showContent();
      renderOverview(overview);
      renderWorkers(workers);
      renderSessions(sessions);
      setStatus(state.paused ? "Paused" : `Live · updated ${new Date().toLocaleTimeString()}`, false);
    } catch (err) {
      if (err.status === 401) {
        showLogin(state.token ? "The server refused this token." : "");
      } else if (err.status === 403 && err.reason === "PERMISSION_DENIED") {
        showLogin("This token does not have the operator role.");
      } else if (err.status === 400) {
        setStatus(`Filter refused: ${err.message}`, true);
      } else {
        setStatus(`Connection problem: ${err.message} — retrying`, true);
      }
    } finally {
      state.polling = false;
    }
  }

  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(tick, delay);
  }

  async function tick() {
    if (!state.paused && !state.needsLogin && !document.hidden) await poll();
    schedule(state.pollMs);
  }

  function refreshNow() {
    clearTimeout(state.timer);
    tick();
  }

  function setStatus(text, isError) {
    const status = $("status");
    if (status.textContent !== text) status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  // ------------------------------------------------------------------ sign in

  function showLogin(message) {
    state.needsLogin = true;
    state.token = null;
    $("content").hidden = true;
    $("signout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setStatus("Sign in to see this server", false);
    $("token").focus();
  }

  function showContent() {
    state.needsLogin = false;
    $("login").hidden = true;
    $("content").hidden = false;
    $("signout").hidden = !state.token;
  }

  // ------------------------------------------------------------------ rendering

  function renderOverview(o) {
    const server = o.server || {};
    if (server.poll_interval_ms) state.pollMs = Math.max(250, server.poll_interval_ms);
    $("server").textContent = `v${server.version} · incarnation ${short(server.incarnation)} · up ` +
      `${age(server.uptime_s)} · gRPC ${server.grpc_listen} · auth ${server.auth}`;

    const failures = o.failures || { timeline: [], totals: {}, recent: [], causes: [] };
    const lastHour = failures.timeline.reduce(
      (sum, b) => sum + Object.values(b.counts).reduce((a, c) => a + c, 0), 0);
    const totals = $("totals");
    totals.replaceChildren(...[
      ["Workers", o.totals.workers],
      ["Open sessions", o.totals.open_sessions],
      ["Waiting creates", o.totals.waiting],
      ["Task queues", o.totals.task_queues],
      [`Failures, last ${Math.round((failures.timeline.length * failures.bucket_s) / 60)} min`, lastHour],
    ].map(([label, value]) => el("div", null, el("dt", { text: label }), el("dd", { text: String(value) }))));

    if (!state.causesFilled && failures.causes.length) {
      const select = $("f-cause");
      for (const cause of failures.causes) {
        select.append(el("option", { value: cause.toLowerCase(), text: cause }));
      }
      state.causesFilled = true;
    }

    syncRows($("queues").tBodies[0], o.queues, (q) => q.task_queue, (q) => [
      ["Task queue", "", el("button", { type: "button", class: "link", text: q.task_queue,
        "aria-label": `Show workers and sessions of task queue ${q.task_queue}`,
        onclick: () => filterQueue(q.task_queue) })],
      ["Workers", "num", el("span", null, `${q.ready_workers} ready / ${q.workers}`,
        q.draining_workers || q.silent_workers
          ? el("span", { class: "sub", text: `${q.draining_workers} draining, ${q.silent_workers} silent` }) : null)],
      ["Used / capacity", "", bars(q.capacity, q.used)],
      ["Available", "num", amountText(q.available)],
      ["Waiting creates", "num wait", waitText(q)],
      ["Open sessions", "num", String(q.open_sessions)],
      ["Cannot be placed", "", unplaceable(q)],
    ], (q) => ({ wait: waitText(q) }));
    $("queues-empty").hidden = o.queues.length > 0;
    const more = $("queues-more");
    more.hidden = o.queues_total <= o.queues.length;
    more.textContent = `Showing ${o.queues.length} of ${o.queues_total} task queues.`;

    renderFailures(failures);
  }

  // Waiting creates no connected worker could ever hold (labels, capacity): they wait for such a
  // worker to join, and this says why, per kind of request.
  function unplaceable(q) {
    const kinds = (q.waiting_requests || []).filter((k) => k.unplaceable_reason);
    if (!kinds.length) return el("span", { class: "muted", text: "–" });
    const box = el("div", { class: "unplaceable" });
    for (const k of kinds) {
      const asks = amountText(k.resources) + (k.selector ? ` where ${k.selector}` : "");
      box.append(el("div", null, el("span", { class: "badge w-full", text: `${k.count} waiting` }), ` ${asks}`,
        el("span", { class: "sub", text: k.unplaceable_reason })));
    }
    return box;
  }

  function waitText(q) {
    if (!q.waiting) return "0";
    const recreates = q.waiting_recreates ? ` (${q.waiting_recreates} recreates)` : "";
    return `${q.waiting}${recreates}, oldest ${age(q.oldest_wait_s)}`;
  }

  function renderWorkers(page) {
    state.workers.next = page.next_page_token;
    $("workers-next").disabled = !page.next_page_token;
    $("workers-first").disabled = !state.workers.cursor;
    const note = $("workers-filter");
    note.hidden = !state.workers.queue;
    if (state.workers.queue) {
      note.replaceChildren(`Task queue ${state.workers.queue} only. `,
        el("button", { type: "button", class: "link", text: "Show all", onclick: () => filterQueue("") }));
    }
    syncRows($("workers").tBodies[0], page.workers, (w) => `${w.task_queue}\u0000${w.worker_id}`, (w) => [
      ["Worker", "", el("span", null, el("span", { class: "id", text: w.worker_id }),
        el("span", { class: "sub", text: w.identity || "" }),
        Object.keys(w.labels || {}).length
          ? el("span", { class: "sub", text: Object.entries(w.labels).map(([k, v]) => `${k}=${v}`).join(", ") })
          : null)],
      ["Host", "", w.host_name || "–"],
      ["Task queue", "", w.task_queue],
      ["Capacity", "", bars(w.capacity, w.used)],
      ["Last heartbeat", "num heartbeat", `${age(w.last_heartbeat_age_s)} ago`],
      ["State", "", el("span", { class: `badge w-${w.state}`, text: w.state })],
      ["Sessions held", "", heldSessions(w)],
    ], (w) => ({ heartbeat: `${age(w.last_heartbeat_age_s)} ago` }));
    $("workers-empty").hidden = page.workers.length > 0;
  }

  function heldSessions(w) {
    const box = el("div", { class: "held" });
    box.append(el("button", { type: "button", class: "link", text: `${w.open_sessions} open`,
      "aria-label": `Show the sessions of worker ${w.worker_id}`,
      onclick: () => filterSessions({ worker_id: w.worker_id, task_queue: w.task_queue }) }));
    for (const id of w.sessions) box.append(el("span", { class: "id", title: id, text: short(id) }));
    return box;
  }

  function renderSessions(page) {
    state.sessions.next = page.next_page_token;
    $("sessions-next").disabled = !page.next_page_token;
    $("sessions-first").disabled = !state.sessions.cursor;
    syncRows($("sessions").tBodies[0], page.sessions, (s) => s.session_id, (s) => [
      ["Session", "id", el("span", { class: "id", title: s.session_id, text: s.session_id })],
      ["Task queue", "", s.task_queue],
      ["Owner", "", s.owner || "–"],
      ["State", "state", el("span", { class: `badge s-${s.state}`, text: stateText(s) })],
      ["Worker", "", el("span", null, el("span", { class: "id", title: s.worker.worker_id, text: short(s.worker.worker_id) }),
        el("span", { class: "sub", text: s.worker.host_name || "" }))],
      ["Age", "num age", age(s.age_s)],
      ["Activities", "num", `${s.activity_count}${s.activities_in_flight ? ` (${s.activities_in_flight} running)` : ""}`],
      ["Failure", "failure", s.failure
        ? el("span", null, el("span", { class: "cause-text", text: s.failure.cause }),
          el("span", { class: "sub", text: s.failure.message }))
        : "–"],
      ["Action", "", s.state === "OPEN"
        ? el("button", { type: "button", class: "danger", text: "Complete",
          "aria-label": `Complete session ${s.session_id}`, onclick: () => complete(s.session_id) })
        : "–"],
    ], (s) => ({ age: age(s.age_s) }));
    $("sessions-empty").hidden = page.sessions.length > 0;
  }

  function stateText(s) {
    return s.detached_since ? `${s.state} (detached)` : s.state;
  }

  function renderFailures(f) {
    const timeline = $("timeline");
    const max = Math.max(1, ...f.timeline.map((b) => Object.values(b.counts).reduce((a, c) => a + c, 0)));
    timeline.replaceChildren(...f.timeline.map((b) => {
      const col = el("div", { class: "col" });
      const parts = Object.entries(b.counts);
      col.title = `${localTime(b.start)}: ` + (parts.length ? parts.map(([c, n]) => `${c} ${n}`).join(", ") : "none");
      for (const [cause, n] of parts) {
        const seg = el("span", { class: causeClass(cause) });
        seg.style.height = `${(100 * n) / max}%`;
        col.append(seg);
      }
      return col;
    }));
    const minutes = Math.round((f.timeline.length * f.bucket_s) / 60);
    $("axis-start").textContent = `${minutes} min ago`;
    const inWindow = {};
    for (const b of f.timeline) for (const [c, n] of Object.entries(b.counts)) inWindow[c] = (inWindow[c] || 0) + n;
    const seen = [...new Set([...Object.keys(inWindow), ...Object.keys(f.totals)])].sort();
    $("legend").replaceChildren(...(seen.length ? seen : f.causes).map((c) => el("li", null,
      el("span", { class: `swatch ${causeClass(c)}`, "aria-hidden": "true" }),
      `${c}: ${inWindow[c] || 0} in ${minutes} min, ${f.totals[c] || 0} since start`)));
    $("timeline-summary").textContent = `Failures in the last ${minutes} minutes: ` +
      (seen.length ? Object.entries(inWindow).map(([c, n]) => `${c} ${n}`).join(", ") || "none" : "none") + ".";

    syncRows($("recent").tBodies[0], f.recent, (r) => r.session_id, (r) => [
      ["When", "num when", `${age(r.age_s)} ago`],
      ["Cause", "", el("span", null, el("span", { class: `swatch ${causeClass(r.cause)}`, "aria-hidden": "true" }),
        " ", el("span", { class: "cause-text", text: r.cause }))],
      ["Session", "", el("span", { class: "id", title: r.session_id, text: short(r.session_id) })],
      ["Task queue", "", r.task_queue],
      ["Worker", "", el("span", { class: "id", title: r.worker_id, text: short(r.worker_id) })],
      ["Message", "message", r.message],
    ], (r) => ({ when: `${age(r.age_s)} ago` }));
    $("recent-empty").hidden = f.recent.length > 0;
  }

  // ------------------------------------------------------------------ actions

  function filterQueue(queue) {
    state.workers.queue = queue;
    state.workers.cursor = "";
    $("f-queue").value = queue;
    applyFilters();
  }

  function filterSessions(values) {
    $("f-queue").value = values.task_queue || "";
    $("f-worker").value = values.worker_id || "";
    applyFilters();
    $("sessions-title").focus();
  }

  function applyFilters() {
    const form = $("filters");
    const filters = {};
    for (const [key, value] of new FormData(form).entries()) {
      if (String(value).trim()) filters[key] = String(value).trim();
    }
    state.sessions.filters = filters;
    state.sessions.cursor = "";
    refreshNow();
  }

  async function complete(sessionId) {
    if (!window.confirm(`Complete session ${sessionId}? Its slot is freed and its running activities are cancelled.`)) {
      return;
    }
    try {
      await api(`${SESSIONS_PATH}/${encodeURIComponent(sessionId)}/complete`, { method: "POST" });
      setStatus(`Completed session ${short(sessionId)}`, false);
    } catch (err) {
      setStatus(`Could not complete ${short(sessionId)}: ${err.message}`, true);
    }
    refreshNow();
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("token");
      state.token = input.value.trim() || null;
      input.value = "";
      state.needsLogin = false;
      refreshNow();
    });
    $("signout").addEventListener("click", () => showLogin(""));
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      $("pause").setAttribute("aria-pressed", String(state.paused));
      $("pause").textContent = state.paused ? "Resume updates" : "Pause updates";
      setStatus(state.paused ? "Paused" : "Resuming…", false);
      if (!state.paused) refreshNow();
    });
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      applyFilters();
    });
    $("filters").addEventListener("reset", () => setTimeout(() => {
      state.workers.queue = "";
      state.workers.cursor = "";
      applyFilters();
    }, 0));
    $("workers-next").addEventListener("click", () => { state.workers.cursor = state.workers.next; refreshNow(); });
    $("workers-first").addEventListener("click", () => { state.workers.cursor = ""; refreshNow(); });
    $("sessions-next").addEventListener("click", () => { state.sessions.cursor = state.sessions.next; refreshNow(); });
    $("sessions-first").addEventListener("click", () => { state.sessions.cursor = ""; refreshNow(); });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshNow(); });
    refreshNow();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
