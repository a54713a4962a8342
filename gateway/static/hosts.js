// The status page's host bars (one group per host, from /api/cluster/status's hosts) and
// its dead letters (GET /api/cluster/dead, newest first) with a replay button each. Uses
// $, api, cell, actionButton and watchTask from app.js; everything shown is set as text,
// never as HTML.
"use strict";

const DEAD_SHOWN = 10;
const DEAD_POLL_MS = 15000;

function bar(label, value) {
  const row = document.createElement("div");
  row.className = "bar-row";
  const name = document.createElement("span");
  name.textContent = label;
  const track = document.createElement("div");
  track.className = "bar";
  const fill = document.createElement("div");
  const pct = typeof value === "number" ? Math.max(0, Math.min(100, value)) : 0;
  fill.style.width = pct + "%";
  fill.className = pct >= 90 ? "hot" : pct >= 75 ? "warm" : "";
  track.appendChild(fill);
  const figure = document.createElement("span");
  figure.className = "num v-" + label.toLowerCase();
  figure.textContent = typeof value === "number" ? value.toFixed(0) + " %" : "–";
  row.append(name, track, figure);
  return row;
}

// hosts: {host id: {total_workers, healthy_workers, ..., healer, leader, host: {cpu_percent, ...}}}
function renderHosts(hosts) {
  const list = $("host-list");
  list.textContent = "";
  const ids = Object.keys(hosts).sort();
  $("host-count").textContent = ids.length ? "· " + ids.length : "(none answered yet)";
  for (const id of ids) {
    const h = hosts[id];
    const sample = h.host || {};
    const box = document.createElement("div");
    box.className = "host";
    box.dataset.host = id;
    const head = document.createElement("div");
    head.className = "host-head";
    const name = document.createElement("code");
    name.textContent = id;
    const state = document.createElement("span");
    state.className = "muted";
    state.textContent =
      h.healthy_workers + " of " + h.total_workers + " healthy · healer " + h.healer;
    head.append(name, state);
    if (h.leader) {
      const lead = document.createElement("span");
      lead.className = "pill leader";
      lead.textContent = "leader";
      head.appendChild(lead);
    }
    box.append(head, bar("CPU", sample.cpu_percent), bar("Memory", sample.memory_percent),
      bar("Disk", sample.disk_percent));
    list.appendChild(box);
  }
}

async function refreshDead() {
  if (!token()) return;
  const r = await api("GET", "/api/cluster/dead?limit=" + DEAD_SHOWN);
  if (!r.ok) return;
  const body = $("dead-rows");
  body.textContent = "";
  $("dead-total").textContent = "· " + r.data.total + (r.data.truncated ? "+" : "");
  for (const d of r.data.dead_letters) {
    const tr = document.createElement("tr");
    tr.dataset.task = d.task_id;
    cell(tr, d.task_id, "mono");
    cell(tr, d.agent_type);
    cell(tr, d.reason, "reason");
    cell(tr, new Date(d.dead_at * 1000).toLocaleTimeString(), "num");
    const act = cell(tr, "");
    if (d.replayed_as) {
      act.textContent = "→ " + d.replayed_as;
      act.className = "mono muted replayed";
    } else {
      act.appendChild(actionButton("Replay", "replay", (b) => replay(d.task_id, b)));
    }
    body.appendChild(tr);
  }
}

async function replay(taskId, button) {
  button.disabled = true;
  const r = await api("POST", "/api/cluster/dead/" + encodeURIComponent(taskId) + "/replay");
  $("dead-result").textContent = r.ok
    ? "replayed " + taskId + " as " + r.data.new_task_id
    : "replay failed (" + r.status + "): " + ((r.data && r.data.message) || "no answer");
  if (r.ok) watchTask(r.data.new_task_id);
  refreshDead();
}

function startDeadLetters() {
  refreshDead();
  setInterval(refreshDead, DEAD_POLL_MS);
}
