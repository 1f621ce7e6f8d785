"use strict";
// The live time chart: reads /events, folds each client's events into a
// row, and draws the rows of the last WINDOW seconds on a moving axis.
// Every row is a <g class="client"> whose data- attributes hold what it
// shows (its state, its end, its times in the server's microseconds), so
// that what is drawn can be checked against what happened.

const params = new URLSearchParams(location.search);
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
// Seconds of history on the axis (?window=S), and rows drawn per server
// (?rows=N): the newest arrivals when more are open.
const WINDOW_S = clamp(Number(params.get("window")) || 20, 2, 600);
const MAX_ROWS = clamp(Math.floor(Number(params.get("rows"))) || 40, 1, 500);

const NS = "http://www.w3.org/2000/svg";
const ROW_PX = 22, LABEL_PX = 80, AXIS_PX = 26, WIDTH = 1000, RIGHT_PX = 12;
const PLOT_PX = WIDTH - LABEL_PX - RIGHT_PX;
const ENDS = new Set(["served", "failed", "timed_out", "rejected", "closed_at_shutdown"]);
const COUNTERS = [
  ["accepted", "accepted"], ["served", "served"], ["failed", "failed"],
  ["timed_out", "timed out"], ["rejected", "rejected"],
  ["closed_at_shutdown", "closed at shutdown"], ["clients_now", "clients now"],
  ["max_clients", "at most at once"], ["bytes_in", "bytes in"], ["bytes_out", "bytes out"],
];

let servers = [];
const statusLine = document.getElementById("status");

function say(text, trouble) {
  statusLine.textContent = text;
  statusLine.className = trouble ? "trouble" : "";
}

function el(name, attrs, parent) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// A new stream: it replays what the ring holds, so start afresh.
function start(hello) {
  const box = document.getElementById("servers");
  box.replaceChildren();
  servers = hello.servers.map((named, i) => {
    const section = document.createElement("section");
    section.className = "server";
    section.dataset.server = String(i);
    section.dataset.model = named.model;
    const title = document.createElement("h2");
    title.textContent = named.name;
    const settings = document.createElement("p");
    settings.className = "settings";
    settings.textContent = named.settings.join(" · ");
    const counters = document.createElement("div");
    counters.className = "counters";
    const note = document.createElement("p");
    note.className = "note";
    const svg = el("svg", { class: "chart", viewBox: `0 0 ${WIDTH} ${AXIS_PX}` });
    section.append(title, settings, counters, note, svg);
    box.appendChild(section);
    return { named, rows: new Map(), clock: null, figures: null, missed: 0, counters, note, svg };
  });
}

function apply(line) {
  const server = servers[line.server];
  if (!server) return;
  let row = server.rows.get(line.client);
  if (!row) {
    row = { client: line.client, accepted: null, admitted: null, first: null, ended: null, end: null };
    server.rows.set(line.client, row);
  }
  if (line.what === "accepted") row.accepted = line.at_us;
  else if (line.what === "admitted") row.admitted = line.at_us;
  else if (line.what === "first_byte") row.first = line.at_us;
  else if (ENDS.has(line.what)) { row.ended = line.at_us; row.end = line.what; }
}

function status(list) {
  const now = performance.now();
  list.forEach((s, i) => {
    if (!servers[i]) return;
    servers[i].clock = { us: s.now_us, at: now };
    servers[i].figures = s.counters;
  });
}

// The server's clock now: its last word, moved on by ours.
function serverNow(server) {
  return server.clock.us + (performance.now() - server.clock.at) * 1000;
}

function tickStep(windowS) {
  for (const step of [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]) {
    if (windowS / step <= 10) return step;
  }
  return 600;
}

function drawCounters(server) {
  const f = server.figures;
  if (!f) return;
  const parts = COUNTERS.map(([key, label]) => [key, label, f[key]]);
  if (f.pool_threads > 0) {
    parts.push(["pool_busy", "pool workers busy", `${f.pool_busy} of ${f.pool_threads}`]);
    parts.push(["pool_waiting", "waiting for a worker", f.pool_waiting]);
  }
  server.counters.replaceChildren(...parts.map(([key, label, value]) => {
    const span = document.createElement("span");
    span.dataset.counter = key;
    const b = document.createElement("b");
    b.textContent = String(value);
    span.append(`${label} `, b);
    return span;
  }));
}

function draw(server) {
  drawCounters(server);
  if (!server.clock) return;
  const now = serverNow(server);
  const span = WINDOW_S * 1e6;
  // The axis starts at the server's start, and moves once it is full.
  const left = Math.max(0, now - span);
  // Ended rows scroll away with the axis, and are forgotten then.
  for (const [id, row] of server.rows) {
    if (row.ended !== null && row.ended < left) server.rows.delete(id);
  }
  const all = [...server.rows.values()].sort((a, b) => a.client - b.client);
  const rows = all.slice(Math.max(0, all.length - MAX_ROWS));
  const notes = [];
  if (all.length > rows.length) notes.push(`${all.length - rows.length} earlier clients not drawn (?rows=N draws more)`);
  if (server.missed > 0) notes.push(`${server.missed} events missed: this page fell behind the server`);
  server.note.textContent = notes.join("; ");

  const x = (t) => LABEL_PX + (clamp(t, left, now) - left) / span * PLOT_PX;
  const height = rows.length * ROW_PX + AXIS_PX;
  const svg = server.svg;
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
  svg.replaceChildren();

  const step = tickStep(WINDOW_S);
  const axisY = rows.length * ROW_PX;
  el("line", { class: "grid", x1: LABEL_PX, y1: axisY, x2: LABEL_PX + PLOT_PX, y2: axisY }, svg);
  for (let t = Math.ceil(left / 1e6 / step) * step; t * 1e6 <= now; t += step) {
    const tx = x(t * 1e6);
    el("line", { class: "grid", x1: tx, y1: 0, x2: tx, y2: axisY + 4 }, svg);
    const label = el("text", { x: tx, y: axisY + 16, "text-anchor": "middle" }, svg);
    label.textContent = `${+t.toFixed(1)} s`;
  }
  const nowX = x(now);
  el("line", { class: "now", x1: nowX, y1: 0, x2: nowX, y2: axisY }, svg);

  rows.forEach((row, i) => {
    const mid = i * ROW_PX + ROW_PX / 2;
    const state = row.ended !== null ? "ended" : row.admitted !== null ? "serving" : "waiting";
    const g = el("g", { class: "client" }, svg);
    g.dataset.client = String(row.client);
    g.dataset.state = state;
    if (row.end) g.dataset.end = row.end;
    for (const [key, value] of [["acceptedUs", row.accepted], ["admittedUs", row.admitted],
                                ["firstByteUs", row.first], ["endedUs", row.ended]]) {
      if (value !== null) g.dataset[key] = String(value);
    }
    const label = el("text", { x: 4, y: mid + 4 }, g);
    label.textContent = `client ${row.client}`;
    const from = row.accepted !== null ? row.accepted : left;
    const waitedUntil = row.admitted !== null ? row.admitted : row.ended !== null ? row.ended : now;
    el("line", { class: "wait", x1: x(from), y1: mid, x2: x(waitedUntil), y2: mid }, g);
    if (row.admitted !== null) {
      const until = row.ended !== null ? row.ended : now;
      const kind = row.end ? row.end : "serving";
      el("rect", {
        class: `bar ${kind}`, x: x(row.admitted), y: mid - ROW_PX * 0.3,
        width: Math.max(0, x(until) - x(row.admitted)), height: ROW_PX * 0.6,
      }, g);
      if (row.first !== null) {
        el("line", { class: "first-byte", x1: x(row.first), y1: mid - 4, x2: x(row.first), y2: mid + 4 }, g);
      }
    }
    if (row.end) {
      const ex = x(row.ended);
      el("line", { class: `end-mark ${row.end}`, x1: ex, y1: mid - 8, x2: ex, y2: mid + 8 }, g);
    }
    if (row.accepted !== null && row.accepted >= left) {
      const ax = x(row.accepted);
      el("path", { class: "arrival", d: `M${ax} ${mid - 6} L${ax + 6} ${mid} L${ax} ${mid + 6} L${ax - 6} ${mid} Z` }, g);
    }
  });
}

// Five times a second: the axis moves a few pixels a step, and a browser
// on the server's own machine takes little from it (a timer rather than
// animation frames, which would wake it sixty times a second for nothing).
const DRAW_EVERY_MS = 200;


function connect() {
  const source = new EventSource("events");
  source.addEventListener("hello", (e) => { start(JSON.parse(e.data)); say("live"); });
  source.addEventListener("events", (e) => {
    for (const line of e.data.split("\n")) apply(JSON.parse(line));
  });
  source.addEventListener("missed", (e) => {
    const m = JSON.parse(e.data);
    if (servers[m.server]) servers[m.server].missed += m.missed;
  });
  source.addEventListener("status", (e) => status(JSON.parse(e.data)));
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      say("the stream was refused or ended (too many viewers, or the server stopped): reload to try again", true);
    } else {
      say("the stream was cut: reconnecting…", true);
    }
  };
}

connect();
setInterval(() => servers.forEach(draw), DRAW_EVERY_MS);
