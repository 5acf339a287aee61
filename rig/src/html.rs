//! The demo as one self-contained HTML page: first the side-by-side table (what each way lost,
//! the same table the demo prints), then per mode and rollout, each pod's life as
//! horizontal bars (created → containers ready → registered → healthy in the ELB → terminating
//! → deregistered → removed; Kubernetes Ready as a strip on top, gate True as a tick) over the
//! requests per 100 ms, failures in red.
//!
//! The figures go into the page as JSON; a small script in the page draws them as SVG, so the
//! page needs no external asset and a browser test can count what it really drew.

use crate::demo::{ModeReport, Phase, RolloutResult};
use crate::timeline::Milestone;
use serde::Serialize;
use std::time::Instant;

/// Width of one request bucket, in milliseconds.
pub const BUCKET_MS: u64 = 100;

#[derive(Serialize)]
struct Page {
    /// `demo::side_by_side`, shown first: its first screen answers how many requests each way
    /// lost.
    table: String,
    modes: Vec<ModeData>,
    bucket_ms: u64,
}

#[derive(Serialize)]
struct ModeData {
    title: &'static str,
    namespace: String,
    rollouts: Vec<RolloutData>,
}

#[derive(Serialize)]
struct RolloutData {
    revision: String,
    summary: String,
    /// Seconds from the start of the load to the start and end of the rollout.
    started: f64,
    ended: Option<f64>,
    pods: Vec<PodData>,
    /// Per bucket: requests answered, failed on the start side, failed on the termination side.
    buckets: Vec<[u32; 3]>,
}

#[derive(Serialize)]
struct PodData {
    name: String,
    revision: String,
    /// Milestone label → seconds from the start of the load.
    at: Vec<(&'static str, f64)>,
}

fn since(r: &RolloutResult, t: Instant) -> f64 {
    t.saturating_duration_since(r.load_started).as_secs_f64()
}

fn rollout_data(r: &RolloutResult) -> RolloutData {
    let mut pods: Vec<PodData> = r
        .pods
        .iter()
        .map(|p| PodData {
            name: p.name.clone(),
            revision: p.revision.clone(),
            at: Milestone::ALL
                .iter()
                .filter_map(|m| Some((m.label(), since(r, *p.at.get(m)?))))
                .collect(),
        })
        .collect();
    // Old pods first, then new ones, each in order of creation.
    pods.sort_by(|a, b| {
        let created = |p: &PodData| p.at.first().map_or(0.0, |(_, t)| *t);
        (a.revision == r.revision, created(a))
            .partial_cmp(&(b.revision == r.revision, created(b)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut buckets: Vec<[u32; 3]> = Vec::new();
    for s in &r.samples {
        let i = (s.at.saturating_duration_since(r.load_started).as_millis() as u64 / BUCKET_MS)
            as usize;
        if buckets.len() <= i {
            buckets.resize(i + 1, [0; 3]);
        }
        let slot = match (s.ok(), r.phase(s)) {
            (true, _) => 0,
            (false, Phase::Start) => 1,
            (false, Phase::Termination) => 2,
        };
        buckets[i][slot] += 1;
    }
    RolloutData {
        revision: r.revision.clone(),
        summary: crate::demo::summary_line(r),
        started: since(r, r.rollout.started),
        ended: r
            .duration()
            .map(|d| since(r, r.rollout.started) + d.as_secs_f64()),
        pods,
        buckets,
    }
}

/// The page for these modes' runs.
pub fn render(modes: &[ModeReport]) -> String {
    let page = Page {
        table: crate::demo::side_by_side(modes),
        modes: modes
            .iter()
            .map(|m| ModeData {
                title: m.mode.title(),
                namespace: m.namespace.clone(),
                rollouts: m.rollouts.iter().map(rollout_data).collect(),
            })
            .collect(),
        bucket_ms: BUCKET_MS,
    };
    // `</` may not appear inside a script element.
    let data = serde_json::to_string(&page)
        .expect("the page data serialises")
        .replace("</", "<\\/");
    TEMPLATE.replace("/*DATA*/null", &data)
}

const TEMPLATE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>readygate rig demo</title>
<style>
  body { font: 13px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
  h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 32px; }
  #table { font: 12px/1.35 ui-monospace, monospace; background: #f6f6f6; padding: 10px; display: inline-block; }
  .summary { font-family: ui-monospace, monospace; font-size: 11px; color: #555; max-width: 1100px; }
  .legend span { display: inline-block; margin-right: 14px; }
  .legend i { display: inline-block; width: 14px; height: 10px; margin-right: 4px; vertical-align: middle; }
  svg text { font: 11px ui-monospace, monospace; fill: #333; }
</style>
</head>
<body>
<h1>readygate rig demo: the same rolling update, three ways</h1>
<pre id="table"></pre>
<p class="legend" id="legend"></p>
<div id="runs"></div>
<script>
const DATA = /*DATA*/null;
const PHASES = [
  ["created", "containers", "#c9c9c9", "starting"],
  ["containers", "registered", "#a7c7e7", "containers ready, not registered"],
  ["registered", "elb-healthy", "#f2c14e", "registered, ELB initial"],
  ["elb-healthy", "terminating", "#5cb85c", "healthy in the ELB"],
  ["terminating", "deregistered", "#9b59b6", "terminating, still registered"],
  ["deregistered", "removed", "#d6b4e8", "deregistered (draining)"],
];
document.getElementById("table").textContent = DATA.table;
const NS = "http://www.w3.org/2000/svg";
function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
const legend = document.getElementById("legend");
for (const [, , color, label] of PHASES) {
  legend.insertAdjacentHTML("beforeend", `<span><i style="background:${color}"></i>${label}</span>`);
}
legend.insertAdjacentHTML("beforeend",
  `<span><i style="background:#1f3b5c; height:4px"></i>Kubernetes Ready</span>` +
  `<span><i style="background:#0b3d0b; width:2px"></i>gate True</span>` +
  `<span><i style="background:#7f8c8d"></i>requests answered / ${DATA.bucket_ms} ms</span>` +
  `<span><i style="background:#e74c3c"></i>failed, start side</span>` +
  `<span><i style="background:#8e0000"></i>failed, termination side</span>`);
const runs = document.getElementById("runs");
for (const mode of DATA.modes) {
  const h = document.createElement("h2");
  h.textContent = `${mode.title} (namespace ${mode.namespace})`;
  runs.appendChild(h);
  for (const r of mode.rollouts) {
    const p = document.createElement("p");
    p.className = "summary";
    p.textContent = r.summary;
    runs.appendChild(p);
    const end = Math.max(1, ...r.pods.flatMap(pd => pd.at.map(([, t]) => t)),
                         r.buckets.length * DATA.bucket_ms / 1000);
    const left = 190, width = 900, row = 16, histo = 60;
    const x = t => left + (t / end) * width;
    const height = r.pods.length * row + histo + 40;
    const svg = el("svg", { width: left + width + 20, height, class: "rollout" }, runs);
    r.pods.forEach((pd, i) => {
      const y = 10 + i * row;
      const g = el("g", { class: "pod-row", "data-pod": pd.name }, svg);
      const t = el("text", { x: 4, y: y + 11 }, g);
      t.textContent = pd.name + (pd.revision === r.revision ? " (new)" : "");
      const at = Object.fromEntries(pd.at);
      for (const [from, to, color, label] of PHASES) {
        if (at[from] === undefined) continue;
        // A phase lasts until its end milestone, or until the next milestone seen, or the end.
        const later = PHASES.map(ph => at[ph[1]]).filter(v => v !== undefined && v > at[from]);
        const stop = at[to] !== undefined ? at[to] : (later.length ? Math.min(...later) : end);
        if (stop <= at[from]) continue;
        const bar = el("rect", { x: x(at[from]), y: y + 2, width: Math.max(1, x(stop) - x(at[from])),
                                 height: row - 4, fill: color }, g);
        el("title", {}, bar).textContent = `${pd.name}: ${label} ${at[from].toFixed(2)}–${stop.toFixed(2)} s`;
      }
      if (at["ready"] !== undefined) {
        const stop = at["terminating"] !== undefined ? at["terminating"] : end;
        el("rect", { x: x(at["ready"]), y: y + 2, width: Math.max(1, x(stop) - x(at["ready"])),
                     height: 4, fill: "#1f3b5c", class: "ready" }, g);
      }
      if (at["gate-true"] !== undefined) {
        el("line", { x1: x(at["gate-true"]), x2: x(at["gate-true"]), y1: y, y2: y + row, stroke: "#0b3d0b", "stroke-width": 2 }, g);
      }
    });
    const base = 10 + r.pods.length * row + histo;
    const peak = Math.max(1, ...r.buckets.map(b => b[0] + b[1] + b[2]));
    const bw = Math.max(1, (DATA.bucket_ms / 1000 / end) * width - 0.5);
    const hist = el("g", { class: "requests" }, svg);
    r.buckets.forEach((b, i) => {
      let y = base;
      for (const [n, color] of [[b[0], "#7f8c8d"], [b[1], "#e74c3c"], [b[2], "#8e0000"]]) {
        if (!n) continue;
        const h = (n / peak) * (histo - 6);
        y -= h;
        el("rect", { x: x(i * DATA.bucket_ms / 1000), y, width: bw, height: h, fill: color,
                     class: color === "#7f8c8d" ? "ok" : "failed" }, hist);
      }
    });
    el("line", { x1: left, x2: left + width, y1: base, y2: base, stroke: "#999" }, svg);
    for (let s = 0; s <= end; s += end > 20 ? 5 : 1) {
      const lbl = el("text", { x: x(s) - 4, y: base + 14 }, svg);
      lbl.textContent = `${s}s`;
    }
    for (const t of [r.started, r.ended]) {
      if (t === null || t === undefined) continue;
      el("line", { x1: x(t), x2: x(t), y1: 4, y2: base, stroke: "#333", "stroke-dasharray": "3,3" }, svg);
    }
  }
}
document.body.setAttribute("data-drawn", document.querySelectorAll("g.pod-row").length);
</script>
</body>
</html>
"##;
