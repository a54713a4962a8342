// The status page: live from /api/cluster/events, with status and worker polls for
// what events do not carry. The API token comes from the page's #token= fragment
// (never sent to the server in a URL) or the form, is kept in sessionStorage for this
// tab, and goes only in Authorization headers. Streams are read with fetch(), since
// EventSource cannot send a header. Everything shown is set as text, never as HTML.
"use strict";

const TOKEN_KEY = "foundry-token";
const POLL_MS = 2000;
const HEAL_EVENTS = 30;
const $ = (id) => document.getElementById(id);

function takeTokenFromFragment() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

function notice(text) {
  const el = $("notice");
  el.textContent = text || "";
  el.hidden = !text;
}

function askForToken(why) {
  $("token-form").hidden = false;
  $("forget").hidden = true;
  notice(why);
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + token() };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  if (resp.status === 401) askForToken("The token was refused: " + ((data && data.message) || "401"));
  return { status: resp.status, ok: resp.ok, data };
}

// Server-Sent Events over fetch: calls onEvent(name, data, id) per frame, reconnects with
// Last-Event-ID until stop() is called or onEvent returns false.
function stream(path, onEvent, onState) {
  const control = { stopped: false, abort: null, lastId: null };
  control.stop = () => {
    control.stopped = true;
    if (control.abort) control.abort.abort();
  };
  (async () => {
    let delay = 500;
    while (!control.stopped) {
      const abort = new AbortController();
      control.abort = abort;
      try {
        const headers = { Authorization: "Bearer " + token(), Accept: "text/event-stream" };
        if (control.lastId !== null) headers["Last-Event-ID"] = control.lastId;
        const resp = await fetch(path, { headers, signal: abort.signal, cache: "no-store" });
        if (resp.status === 401) {
          askForToken("The token was refused (401)");
          onState && onState(false);
          return;
        }
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        onState && onState(true);
        delay = 500;
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let name = "message", id = null, data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("id: ")) id = line.slice(4);
              else if (line.startsWith("event: ")) name = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
            }
            if (!data) continue;
            if (id !== null) control.lastId = id;
            if (onEvent(name, JSON.parse(data), id) === false) {
              control.stop();
              return;
            }
          }
        }
      } catch (err) {
        if (control.stopped) return;
      }
      onState && onState(false);
      if (control.stopped) return;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  })();
  return control;
}

// ---- rendering ------------------------------------------------------------------------
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.floor(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

// a row's button: onClick gets the button (to disable it while the request runs)
function actionButton(label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = cls;
  b.addEventListener("click", () => onClick(b));
  return b;
}

const megabytes = (bytes) => (bytes ? (bytes / 1048576).toFixed(0) + " MB" : "–");

// worker id -> {at, oldPid, newPid} of the latest relaunch event: until the new process's
// heartbeat reaches the table, the row shows the new pid the event announced
const relaunched = new Map();

function renderWorkers(agents) {
  const body = $("worker-rows");
  body.textContent = "";
  for (const a of agents) {
    const tr = document.createElement("tr");
    tr.dataset.worker = a.worker_id;
    cell(tr, a.worker_id, "mono");
    cell(tr, a.agent_type);
    const status = cell(tr, a.status);
    status.className = "status " + a.status;
    const seen = relaunched.get(a.worker_id);
    let pid = a.pid;
    // (a slot quarantined since is not coming back: no relaunch mark)
    if (seen && a.status !== "quarantined" && Date.now() - seen.at < 10000) {
      status.textContent = a.status + " · relaunched";
      tr.classList.add("relaunched");
      if (seen.newPid && a.pid === seen.oldPid) pid = seen.newPid;
    }
    cell(tr, pid, "num pid");
    cell(tr, a.tasks_processed, "num");
    cell(tr, a.errors, "num");
    cell(tr, duration(a.uptime_seconds), "num");
    cell(tr, megabytes(a.rss_bytes), "num");
    const act = cell(tr, "");
    if (a.status === "quarantined") {
      act.appendChild(actionButton("Release", "release", (b) => release(a.worker_id, b)));
    }
    body.appendChild(tr);
  }
}

function renderStatus(s) {
  $("c-total").textContent = s.total_workers;
  $("c-healthy").textContent = s.healthy_workers;
  $("c-unhealthy").textContent = s.unhealthy_workers;
  $("c-quarantined").textContent = s.quarantined_workers;
  renderHosts(s.hosts || {});
  const q = $("queue-rows");
  q.textContent = "";
  for (const [type, row] of Object.entries(s.queues || {})) {
    const tr = document.createElement("tr");
    cell(tr, type);
    cell(tr, row.pending, "num");
    cell(tr, row.ack_pending, "num");
    cell(tr, row.redelivered, "num");
    q.appendChild(tr);
  }
  const select = $("s-type");
  const types = Object.keys(s.agent_types || {});
  if (select.options.length !== types.length) {
    select.textContent = "";
    for (const t of types) select.appendChild(new Option(t, t));
  }
}

function describeHeal(e) {
  if (e.kind === "heal.audit") {
    const what = [e.action, e.worker_id || e.task_id].filter(Boolean).join(" ");
    return "audit: " + what + " by " + (e.token || "?") + " (" + (e.outcome || e.status) + ")";
  }
  const who = e.slot || e.worker_id || e.host || "";
  const bits = [e.kind.replace("heal.", ""), who];
  if (e.reason) bits.push("(" + e.reason + ")");
  if (e.old_pid && e.new_pid) bits.push("pid " + e.old_pid + " → " + e.new_pid);
  return bits.filter(Boolean).join(" ");
}

function addHealEvent(e) {
  const li = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = new Date(e.at * 1000).toLocaleTimeString();
  li.appendChild(time);
  const text = document.createElement("span");
  text.textContent = describeHeal(e);
  li.appendChild(text);
  li.className = e.kind.replace(".", "-");
  const list = $("heal-list");
  list.insertBefore(li, list.firstChild);
  while (list.children.length > HEAL_EVENTS) list.removeChild(list.lastChild);
}

// ---- data --------------------------------------------------------------------------------
let refreshing = null;
let again = false;

async function refresh() {
  if (!token()) return;
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = (async () => {
    const [status, agents] = await Promise.all([
      api("GET", "/api/cluster/status"),
      api("GET", "/api/cluster/agents/live"),
    ]);
    if (status.ok) renderStatus(status.data);
    if (agents.ok) renderWorkers(agents.data.agents);
  })();
  try {
    await refreshing;
  } catch (err) {
    notice("The gateway did not answer: " + err.message);
  } finally {
    refreshing = null;
    if (again) {
      again = false;
      refresh();
    }
  }
}

function onHealEvent(name, e) {
  addHealEvent(e);
  if (e.kind === "heal.dead_letter" || e.kind === "heal.poison") refreshDead();
  if (e.kind === "heal.relaunch" && e.slot) {
    relaunched.set(e.slot, { at: Date.now(), oldPid: e.old_pid, newPid: e.new_pid });
    const row = document.querySelector('tr[data-worker="' + CSS.escape(e.slot) + '"]');
    if (row) {
      row.classList.add("relaunched");
      row.querySelector(".status").textContent = "relaunched";
      if (e.new_pid) row.querySelector(".pid").textContent = String(e.new_pid);
    }
    setTimeout(refresh, 700); // by then the new process has sent its first heartbeat
  }
  refresh();
}

function setLive(on) {
  const pill = $("live");
  pill.textContent = on ? "live" : "reconnecting…";
  pill.className = "pill " + (on ? "on" : "off");
}

// ---- actions -------------------------------------------------------------------------------
async function heal() {
  const out = $("heal-result");
  out.textContent = "healing…";
  const r = await api("POST", "/api/cluster/heal");
  out.textContent = r.ok ? r.data.message : "heal failed: " + ((r.data && r.data.message) || r.status);
  refresh();
}

async function release(workerId, button) {
  button.disabled = true;
  const r = await api("POST", "/api/cluster/workers/" + encodeURIComponent(workerId) + "/release");
  $("heal-result").textContent = r.ok
    ? "released " + workerId
    : "release failed: " + ((r.data && r.data.message) || r.status);
  refresh();
}

let watching = null;

function watchTask(taskId) {
  if (watching) watching.stop();
  $("watch").hidden = false;
  $("w-id").textContent = taskId;
  $("w-status").textContent = "queued";
  $("w-status").className = "pill";
  $("w-attempt").textContent = "";
  $("w-output").textContent = "";
  $("w-result").textContent = "";
  $("w-error").textContent = "";
  let attempt = 0;
  const path = "/api/cluster/task/" + encodeURIComponent(taskId) + "/stream";
  watching = stream(path, (name, data) => {
    if (name === "output") {
      if (data.attempt !== attempt) {
        attempt = data.attempt;
        $("w-output").textContent = ""; // an earlier attempt's partial output is void
        $("w-attempt").textContent = attempt > 1 ? "attempt " + attempt : "";
      }
      $("w-status").textContent = "running";
      const span = document.createElement("span");
      span.className = data.stream;
      span.textContent = data.data;
      $("w-output").appendChild(span);
      return true;
    }
    if (name === "end") {
      $("w-status").textContent = data.status;
      $("w-status").className = "pill " + data.status;
      const shown = data.error ? { error: data.error, result: data.result } : data.result;
      $("w-result").textContent = JSON.stringify(shown, null, 2);
      return false;
    }
    return true;
  });
}

async function submit(ev) {
  ev.preventDefault();
  const body = { agent_type: $("s-type").value, description: $("s-desc").value };
  const raw = $("s-input").value.trim();
  if (raw) {
    try {
      body.input = JSON.parse(raw);
    } catch (err) {
      notice("Input is not JSON: " + err.message);
      return;
    }
  }
  notice("");
  const r = await api("POST", "/api/cluster/task/submit", body);
  if (!r.ok) {
    notice("Not submitted: " + ((r.data && r.data.message) || r.status));
    return;
  }
  watchTask(r.data.task_id);
}

async function cancelTask() {
  const taskId = $("w-id").textContent;
  const r = await api("POST", "/api/cluster/task/" + encodeURIComponent(taskId) + "/cancel");
  $("w-error").textContent = r.ok
    ? "cancel: " + (r.data.status || "requested")
    : "cancel failed (" + r.status + "): " + ((r.data && r.data.message) || "no answer");
}

// ---- start ---------------------------------------------------------------------------------
function start() {
  $("token-form").hidden = true;
  $("forget").hidden = false;
  notice("");
  refresh();
  stream("/api/cluster/events?kind=heal", (name, data) => onHealEvent(name, data), setLive);
  startDeadLetters();
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    start();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  $("heal").addEventListener("click", heal);
  $("submit-form").addEventListener("submit", submit);
  $("w-cancel").addEventListener("click", cancelTask);
  setInterval(refresh, POLL_MS);
  if (token()) start();
  else askForToken("Enter an API token (scope read; operate for heal and release, submit to submit).");
});
