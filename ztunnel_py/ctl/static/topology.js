// The topology page: polls /api/graph, draws it as layered SVG, shows a workload's side panel
// from /api/node. Plain JavaScript, no library: served from the installed package.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLUMN = 270;
const ROW = 150;
const MARGIN = 70;
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"];

const state = { graph: null, renders: 0, selected: null, timer: null };
window.topology = state; // what a test (or a curious person) can read back

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function colour(namespace) {
  let h = 0;
  for (const c of namespace) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

// Rank = longest path from a node nobody calls (bounded, so a cycle cannot loop forever).
function layout(graph) {
  const rank = new Map(graph.nodes.map((n) => [n.id, 0]));
  for (let i = 0; i < graph.nodes.length; i++) {
    let changed = false;
    for (const e of graph.edges) {
      if (e.source === e.target) continue;
      const want = rank.get(e.source) + 1;
      if (rank.get(e.target) < want) { rank.set(e.target, want); changed = true; }
    }
    if (!changed) break;
  }
  const columns = new Map();
  for (const n of graph.nodes) {
    const r = rank.get(n.id);
    if (!columns.has(r)) columns.set(r, []);
    columns.get(r).push(n);
  }
  const pos = new Map();
  let rows = 1;
  for (const [r, nodes] of columns) {
    nodes.sort((a, b) => (a.namespace + a.name).localeCompare(b.namespace + b.name));
    nodes.forEach((n, i) => pos.set(n.id, { x: MARGIN + r * COLUMN, y: MARGIN + i * ROW }));
    rows = Math.max(rows, nodes.length);
  }
  return { pos, width: MARGIN * 2 + (Math.max(0, ...columns.keys()) + 1) * COLUMN,
           height: MARGIN * 2 + rows * ROW };
}

function rate(value, unit) {
  if (value >= 100) return `${value.toFixed(0)} ${unit}`;
  return `${value.toFixed(value >= 10 ? 1 : 2)} ${unit}`;
}

function bytes(value) {
  const units = ["B/s", "kB/s", "MB/s", "GB/s"];
  let i = 0;
  while (value >= 1000 && i < units.length - 1) { value /= 1000; i++; }
  return `${value.toFixed(1)} ${units[i]}`;
}

function edgeLabel(e) {
  const parts = [];
  if (e.rps > 0) {
    parts.push(rate(e.rps, "rps"), `${(e.errorRate * 100).toFixed(1)}% err`);
    if (e.p99Ms !== null) parts.push(`p99 ${e.p99Ms.toFixed(1)} ms`);
  } else if (e.cps > 0) {
    parts.push(rate(e.cps, "conn/s"));
  }
  if (e.bytesPerSecond > 0) parts.push(bytes(e.bytesPerSecond));
  if (e.deniedCps > 0) parts.push(`denied ${rate(e.deniedCps, "/s")}`);
  return parts.join(" · ");
}

function edgeClass(e) {
  if (e.deniedCps > 0 && e.cps <= e.deniedCps && e.rps === 0) return "denied";
  if (e.deniedCps > 0 || e.errorRate > 0.05) return "bad";
  if (e.errorRate > 0) return "warn";
  return "ok";
}

function shape(node, group) {
  const fill = colour(node.namespace);
  if (node.kind === "service") {
    el("polygon", { class: "shape", points: "0,-20 20,0 0,20 -20,0", fill }, group);
  } else if (node.kind === "waypoint") {
    const pts = [...Array(6).keys()].map((i) => {
      const a = Math.PI / 3 * i + Math.PI / 6;
      return `${(20 * Math.cos(a)).toFixed(1)},${(20 * Math.sin(a)).toFixed(1)}`;
    });
    el("polygon", { class: "shape", points: pts.join(" "), fill }, group);
  } else {
    el("circle", { class: "shape", r: 17, fill }, group);
  }
}

function render(graph) {
  const svg = document.getElementById("graph");
  const { pos, width, height } = layout(graph);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.replaceChildren();
  const defs = el("defs", {}, svg);
  const lock = el("symbol", { id: "lock", viewBox: "0 0 12 14", width: 11, height: 13 }, defs);
  el("rect", { x: 1, y: 6, width: 10, height: 8, rx: 1.5, fill: "#1d2733" }, lock);
  el("path", { d: "M3.5,6 V4 a2.5,2.5 0 0 1 5,0 V6", fill: "none", stroke: "#1d2733",
               "stroke-width": 1.6 }, lock);
  for (const cls of ["ok", "warn", "bad", "denied"]) {
    const marker = el("marker", { id: `arrow-${cls}`, viewBox: "0 0 10 10", refX: 10, refY: 5,
                                  markerWidth: 7, markerHeight: 7, orient: "auto" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", class: `arrow ${cls}`,
                 fill: { ok: "#2e8b57", warn: "#e69500", bad: "#d0342c", denied: "#d0342c" }[cls] },
       marker);
  }
  const edges = el("g", { id: "edges" }, svg);
  graph.edges.forEach((e, i) => {
    const a = pos.get(e.source);
    const b = pos.get(e.target);
    if (!a || !b) return;
    const cls = edgeClass(e);
    const g = el("g", {
      class: `edge ${cls}`, "data-source": e.source, "data-target": e.target,
      "data-protocol": e.protocol, "data-rps": e.rps, "data-cps": e.cps,
      "data-error-rate": e.errorRate, "data-p99-ms": e.p99Ms === null ? "" : e.p99Ms,
      "data-bytes-per-second": e.bytesPerSecond, "data-denied-cps": e.deniedCps,
      "data-mtls": e.mtls, "data-waypoint": e.waypoint || "",
    }, edges);
    const dx = b.x - a.x;
    const dy = b.y - a.y;
    const len = Math.hypot(dx, dy) || 1;
    const [x1, y1] = [a.x + (dx / len) * 24, a.y + (dy / len) * 24];
    const [x2, y2] = [b.x - (dx / len) * 24, b.y - (dy / len) * 24];
    // Bend every edge the same way (up, going right) so labels sit clear of the nodes' names.
    const bend = -Math.min(30, len / 8);
    const [cx, cy] = [(x1 + x2) / 2 - (dy / len) * bend, (y1 + y2) / 2 + (dx / len) * bend];
    el("path", { d: `M${x1},${y1} Q${cx},${cy} ${x2},${y2}`,
                 "marker-end": `url(#arrow-${cls})` }, g);
    const [mx, my] = [(x1 + 2 * cx + x2) / 4, (y1 + 2 * cy + y2) / 4 - 7];
    const text = edgeLabel(e);
    const label = el("text", { x: mx, y: my, "text-anchor": "middle" }, g);
    label.textContent = text;
    if (e.mtls) {
      // A padlock drawn in SVG (no emoji font needed), left of the label.
      const width = label.getComputedTextLength ? label.getComputedTextLength() : text.length * 6;
      el("use", { href: "#lock", x: mx - width / 2 - 13, y: my - 10, class: "lock" }, g);
    }
  });
  const nodes = el("g", { id: "nodes" }, svg);
  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const g = el("g", { class: "node" + (n.id === state.selected ? " selected" : ""),
                        transform: `translate(${p.x},${p.y})`, "data-id": n.id,
                        "data-kind": n.kind, "data-namespace": n.namespace }, nodes);
    shape(n, g);
    const name = el("text", { y: 34 }, g);
    name.textContent = n.name;
    const ns = el("text", { y: 47, class: "ns" }, g);
    ns.textContent = `${n.kind} · ${n.namespace}`;
    if (n.kind !== "service") g.addEventListener("click", () => select(n.id));
  }
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("api/graph", { cache: "no-store" });
    const graph = await response.json();
    state.graph = graph;
    render(graph);
    state.renders += 1;
    document.body.dataset.renders = String(state.renders);
    const when = new Date(graph.generatedAt * 1000).toLocaleTimeString();
    const problems = graph.errors.length ? ` · ${graph.errors.length} query errors` : "";
    status.textContent = `${graph.nodes.length} nodes, ${graph.edges.length} edges · ` +
      `${graph.source} · updated ${when}, every ${graph.refreshSeconds} s${problems}`;
    status.className = graph.errors.length ? "error" : "";
    state.timer = setTimeout(refresh, graph.refreshSeconds * 1000);
  } catch (err) {
    status.textContent = `cannot load the graph: ${err}`;
    status.className = "error";
    state.timer = setTimeout(refresh, 3000);
  }
}

function row(table, key, value) {
  const tr = document.createElement("tr");
  const k = document.createElement("td");
  const v = document.createElement("td");
  k.textContent = key;
  v.textContent = value;
  tr.append(k, v);
  table.appendChild(tr);
}

function section(panel, title) {
  const h = document.createElement("h3");
  h.textContent = title;
  const table = document.createElement("table");
  panel.append(h, table);
  return table;
}

async function select(id) {
  state.selected = id;
  window.location.hash = `node=${encodeURIComponent(id)}`;
  if (state.graph) render(state.graph);
  const panel = document.getElementById("panel");
  panel.replaceChildren();
  const title = document.createElement("h2");
  title.textContent = id.replace(/^wl:/, "");
  panel.appendChild(title);
  const response = await fetch(`api/node?id=${encodeURIComponent(id)}`, { cache: "no-store" });
  const details = await response.json();
  if (!response.ok) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = details.error;
    panel.appendChild(p);
    return;
  }
  const w = details.workload;
  const info = section(panel, "Workload");
  row(info, "node", w.node || "");
  row(info, "identity", details.identity);
  row(info, "protocol", w.protocol);
  row(info, "status", w.status);
  row(info, "services", (w.services || []).join(", ") || "none");
  row(info, "waypoint", w.waypoint ? JSON.stringify(w.waypoint.destination || w.waypoint) : "none");
  row(info, "from agent", details.agent);
  const policies = section(panel, "Authorization policies");
  if (!details.policies.length) row(policies, "none", "all traffic allowed");
  for (const p of details.policies) row(policies, p.action, `${p.namespace}/${p.name} (${p.scope})`);
  const certs = section(panel, "Certificates");
  if (!details.certificates.length) row(certs, "none", "this agent holds none for it");
  for (const c of details.certificates) {
    row(certs, "state", c.state);
    c.certChain.forEach((cert, i) => {
      row(certs, i ? `issuer ${i}` : "leaf", `serial ${cert.serialNumber}`);
      row(certs, "valid", `${cert.validFrom} → ${cert.expirationTime}`);
    });
  }
  panel.dataset.node = id;
}

const initial = new URLSearchParams(window.location.hash.slice(1)).get("node");
refresh().then(() => { if (initial) select(initial); });
