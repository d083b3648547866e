// netcheck topology page: re-applies the page's data (/api/v1/page) to the server-rendered
// picture, and fetches what a click selects (an interaction's or a role's details, a check's
// or an interaction's history). Builds DOM with textContent only (data strings are never
// parsed as HTML). An exported page (no controller) reads the details it carries instead.
(function () {
  "use strict";
  const body = document.body;
  const refresh = parseInt(body.dataset.refresh || "", 10);
  const live = refresh > 0;
  let data = JSON.parse(document.getElementById("page-data").textContent);
  const embedded = document.getElementById("page-details");
  const snapshot = embedded ? JSON.parse(embedded.textContent) : null;
  const links = data.links;
  let selected = null; // {kind: "edge"|"role", key: string}
  let picked = null; // the check id whose history is shown
  let shownRows = null; // the failures table's rows beyond the first page (null: none loaded)
  const details = {}; // "interaction:4" -> {at: the data's version, doc}
  let version = 0; // one more at each refresh of the data

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
    }
    return node;
  }
  const pill = (v) => el("span", { class: "pill verdict-" + v }, v);
  const setVerdict = (node, v) => {
    node.classList.remove("verdict-pass", "verdict-fail", "verdict-unknown", "verdict-none");
    node.classList.add("verdict-" + v);
  };
  async function getJSON(url) {
    const resp = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!resp.ok) {
      const err = new Error("HTTP " + resp.status);
      err.status = resp.status;
      throw err;
    }
    return resp.json();
  }

  // -- counts as the edge labels show them (render/common.py short_counts) ------------------
  function short(n, up) {
    if (n < 10000) return String(n);
    const tenths = up ? Math.ceil(n / 100) : Math.floor(n / 100);
    return String(tenths / 10) + "k";
  }
  const shortCounts = (i) => short(i.passed, false) + "/" + short(i.total, i.passed !== i.total);

  function applyPicture() {
    for (const i of data.interactions) {
      document.querySelectorAll('svg [data-interaction="' + i.id + '"]').forEach((n) => setVerdict(n, i.verdict));
      const g = document.querySelector('.edge-label[data-interaction="' + i.id + '"]');
      if (!g) continue;
      const text = g.querySelector("text");
      const rect = g.querySelector("rect");
      text.textContent = i.id + ": " + shortCounts(i);
      const w = Math.min(102, Math.ceil(text.getComputedTextLength() + 14));
      const cx = parseFloat(rect.getAttribute("x")) + parseFloat(rect.getAttribute("width")) / 2;
      rect.setAttribute("x", (cx - w / 2).toFixed(1));
      rect.setAttribute("width", w);
    }
    for (const r of data.roles) {
      const g = document.querySelector('.role[data-role="' + r.role + '"]');
      if (g) setVerdict(g, r.verdict);
    }
  }

  function applyBanners() {
    const cfg = document.getElementById("config-error");
    const err = data.config && data.config.error;
    if (err) {
      cfg.replaceChildren(...[
        el("strong", {}, "The last configuration reload was refused"), "; the previous configuration keeps running. ",
        el("span", { class: "mono where" }, (err.file || "") + (err.line ? ":" + err.line : "")), " ",
        el("span", { class: "message" }, err.message || ""), " ",
        err.at ? el("span", { class: "muted" }, "at " + err.at) : null].filter((c) => c !== null));
    }
    cfg.hidden = !err;
    const nr = document.getElementById("never-registered");
    const agents = data.never_registered || [];
    if (agents.length) {
      nr.replaceChildren(...[
        el("strong", {}, agents.length + " expected agent" + (agents.length !== 1 ? "s" : "") + " never registered:"),
        ...agents.slice(0, 20).map((a) => el("span", { class: "agent mono" }, a.host + " (" + a.role + ", " + a.address + ")")),
        agents.length > 20 ? el("span", { class: "muted" }, "and " + (agents.length - 20) + " more") : null].filter((c) => c !== null));
    }
    nr.hidden = !agents.length;
  }

  function applyHeader() {
    const s = data.summary;
    document.getElementById("count-total").textContent = s.total;
    document.getElementById("count-pass").textContent = s.passed;
    document.getElementById("count-fail").textContent = s.failed;
    document.getElementById("count-unknown").textContent = s.unknown;
    document.getElementById("generated-at").textContent = data.generated_at;
    document.getElementById("site").textContent = data.site;
    const banner = document.getElementById("gate-banner");
    const items = data.gates.map((g) => el("div", { class: "gate decision-" + g.decision, "data-mode": g.who, title: g.reasons.join("\n") },
      el("span", { class: "gate-mode" }, g.who),
      el("span", { class: "gate-decision" }, g.decision.toUpperCase()),
      g.decision !== "go" ? el("span", { class: "gate-blocking" }, g.blocking + " blocking") : null));
    const chip = interconnectChip();
    banner.replaceChildren(...(items.length ? items : [el("div", { class: "gate none" }, "no gate decision")]), ...(chip ? [chip] : []));
    applyBanners();
  }

  // -- VM readiness (page_vms.py) and the interconnect's qualification -----------------------
  // A mode's step, unless the VM has no guest agent and the step is merely unknown (its notes
  // say why every fact is).
  const stepShown = (v, m) => m.step && (m.state !== "unknown" || v.guest_agent);
  function vmRows(block) {
    const span = 4 + block.modes.length;
    const said = (x) => el("td", { class: "said" }, x.value || "unknown", x.source ? " " : null, x.source ? el("span", { class: "src src-" + x.source }, x.source) : null);
    const out = [];
    for (const v of block.rows) {
      out.push(el("tr", { class: "vm state-" + v.state, "data-vm": v.host },
        el("td", { class: "host" }, el("span", { class: "mono" }, v.host), el("span", { class: "addr mono" }, v.role)),
        el("td", {}, ...(v.guest_agent ? ["reported ", el("span", { class: "mono" }, v.reported_at)] : [el("strong", {}, "none"), ": facts unknown"])),
        said(v.os), said(v.boot),
        ...v.modes.map((m) => el("td", { class: "mode" }, el("span", { class: "state state-" + m.state }, m.state),
          stepShown(v, m) ? " " : null, stepShown(v, m) ? el("span", { class: "step" }, "step " + m.step.step + " (" + m.step.title + "): " + m.step.text) : null))));
      const unknown = v.unknown_facts.length && !v.guest_agent;
      if (v.notes.length || unknown) {
        out.push(el("tr", { class: "vm-notes" + (v.mismatch ? " mismatch" : ""), "data-vm": v.host }, el("td", { colspan: String(span) },
          ...v.notes.map((n) => el("div", { class: "note" }, n)),
          unknown ? el("div", { class: "note muted" }, "unknown: " + v.unknown_facts.join(", ") + (v.unknown_total > v.unknown_facts.length ? " and " + (v.unknown_total - v.unknown_facts.length) + " more" : "")) : null)));
      }
    }
    if (!out.length) out.push(el("tr", { class: "empty" }, el("td", { colspan: String(span) }, "No guest VM in this site's checks.")));
    return out;
  }
  function vmTable(block) {
    return el("table", { class: "checks vms" },
      el("thead", {}, el("tr", {}, ...["VM", "Guest agent", "OS", "Boot"].map((h) => el("th", {}, h)), ...block.modes.map((m) => el("th", { class: "mono" }, m)))),
      el("tbody", {}, ...vmRows(block)));
  }
  function vmItems(block) { // the narrow details panel's form of the table: one block per VM
    return block.rows.map((v) => {
      const said = (what, x) => what + " " + (x.value || "unknown") + (x.source ? " (" + x.source + ")" : "");
      const steps = [...new Set(v.modes.filter((m) => stepShown(v, m)).map((m) => "step " + m.step.step + " (" + m.step.title + "): " + m.step.text))];
      return el("div", { class: "vm-item pair state-" + v.state, "data-vm": v.host },
        el("span", { class: "mono" }, v.host), " ", el("span", { class: "muted" }, v.guest_agent ? "guest agent reported " + v.reported_at : "no guest agent"),
        el("div", { class: "muted" }, said("OS", v.os) + " · " + said("boot", v.boot)),
        el("div", { class: "modes" }, ...v.modes.map((m) => el("span", { class: "mode-state" }, m.mode + " ", el("span", { class: "state state-" + m.state }, m.state)))),
        ...steps.slice(0, 4).map((t) => el("div", { class: "step" }, t)),
        ...v.notes.map((n) => el("div", { class: "note" }, n)));
    });
  }
  const vmStates = (b) => b.states.blocks + " blocking · " + b.states.unknown + " unknown · " + b.states.warns + " warning · " + b.states.ready + " ready · " + b.no_agent + " without a guest agent";

  function applyVms() {
    const b = data.vms;
    if (!b) return;
    document.getElementById("vms-count").textContent = b.total;
    document.getElementById("vms-states").textContent = vmStates(b);
    document.getElementById("vms").replaceWith(Object.assign(vmTable(b), { id: "vms" }));
    const more = document.getElementById("vms-more");
    more.hidden = b.total <= b.rows.length;
    more.textContent = b.rows.length + " of " + b.total + " VMs shown, the least ready first; select a VM role (a box) for its VMs, or read the JSON report.";
  }

  function interconnectChip() {
    const ic = data.interconnect;
    if (!ic || !ic.total) return null;
    const cls = ic.required_failing ? "ic-fail" : ic.unknown ? "ic-unknown" : "ic-pass";
    const word = ic.required_failing ? "NOT QUALIFIED" : !ic.unknown ? "QUALIFIED" : !ic.pass ? "NOT MEASURED" : "PARTLY MEASURED";
    return el("div", { id: "interconnect-chip", class: "gate interconnect-chip " + cls, title: "measured data paths (MTU, round trip, loss, throughput) against their thresholds" },
      el("span", { class: "gate-mode" }, "interconnect"), el("span", { class: "gate-decision" }, word),
      el("span", { class: "gate-blocking" }, ic.pass + "/" + ic.total + " paths pass" + (ic.fail ? ", " + ic.fail + " fail" : "") + (ic.unknown ? ", " + ic.unknown + " not measured" : "")));
  }

  const FIGURES = { mtu: "MTU", rtt: "RTT", loss: "loss", throughput_up: "up", throughput_down: "down" };
  function fmt(v, unit, bare) { // bare: the number only (the value's cell names the unit)
    if (v === null || v === undefined) return "–";
    const n = unit === "ms" || unit === "%" ? v.toFixed(1) : String(Math.round(v));
    return bare ? n : n + " " + (unit === "bytes" ? "B" : unit);
  }
  function pathBox(p) {
    const m = p.measured;
    const rows = p.figures.map((f) => {
      const state = f.ok === null ? "unknown" : f.ok ? "pass" : "fail";
      const lower = f.figure === "mtu" || f.figure.startsWith("throughput");
      const margin = f.margin === null ? "–" : (f.margin >= 0 ? "+" : "−") + fmt(Math.abs(f.margin), f.unit, true);
      return el("tr", { class: "figure verdict-" + state, "data-figure": f.figure },
        el("td", { title: f.text }, FIGURES[f.figure] || f.figure), el("td", { class: "num" }, fmt(f.value, f.unit)),
        el("td", { class: "num" }, f.threshold === null ? "not judged" : (lower ? "≥ " : "≤ ") + fmt(f.threshold, f.unit, true)),
        el("td", { class: "num" }, margin), el("td", {}, pill(state)));
    });
    const extra = [];
    if (m && m.jitter_s !== null && m.jitter_s !== undefined) extra.push("jitter " + (m.jitter_s * 1000).toFixed(1) + " ms");
    if (m && m.rtt_min_s !== null && m.rtt_max_s !== null && m.rtt_min_s !== undefined) extra.push("RTT " + (m.rtt_min_s * 1000).toFixed(1) + "–" + (m.rtt_max_s * 1000).toFixed(1) + " ms");
    if (m && m.black_hole) extra.push("MTU black hole (large packets vanish)");
    if (m && m.error) extra.push(m.error);
    return el("div", { class: "path pair verdict-" + p.verdict, "data-path": p.src_host + ">" + p.dst_host },
      pill(p.verdict), " ", el("span", { class: "mono" }, p.src_host + " → " + p.dst_host + ":" + p.port),
      el("span", { class: "muted" }, p.required ? "" : " · not required"),
      el("div", { class: "muted" }, (p.measured_at ? "measured " + p.measured_at : "never measured") + (extra.length ? " · " + extra.join(" · ") : "")),
      p.reason ? el("div", { class: "diagnosis" }, p.reason) : null,
      rows.length ? el("table", { class: "figures" }, el("thead", {}, el("tr", {}, ...["figure", "value", "threshold", "margin", ""].map((h) => el("th", {}, h)))), el("tbody", {}, ...rows)) : null);
  }
  function pathsSection(ps) {
    if (!ps || !ps.total) return [];
    const out = [el("h3", {}, "Interconnect qualification (" + ps.pass + "/" + ps.total + " paths pass)"),
      el("p", { class: "muted" }, "each figure against its threshold; margin: + inside, − beyond; up / down: throughput per direction")];
    for (const p of ps.rows) out.push(pathBox(p));
    if (ps.total > ps.rows.length) out.push(el("p", { class: "muted" }, (ps.total - ps.rows.length) + " more paths in the JSON report"));
    return out;
  }

  const hostCell = (host, address) => el("td", { class: "host" }, el("span", { class: "mono" }, host), el("span", { class: "addr mono" }, address));

  function failureRow(c) {
    return el("tr", { class: "verdict-" + c.verdict + (picked === c.check_id ? " picked" : ""), "data-check": c.check_id, "data-interaction": c.interaction },
      el("td", {}, pill(c.verdict)), el("td", {}, c.interaction),
      hostCell(c.src_host, c.src_address), hostCell(c.dst_host, c.dst_address),
      el("td", { class: "mono" }, c.ports, c.count > 1 ? el("span", { class: "muted" }, " (" + c.count + ")") : null),
      el("td", { class: "mono" }, c.cause), el("td", {}, c.hop), el("td", {}, c.diagnosis));
  }

  function applyFailures() {
    const f = data.failures;
    const rows = f.rows.concat(shownRows || []);
    document.getElementById("failures-count").textContent = f.checks;
    document.getElementById("failures-runs").textContent = f.total + " row" + (f.total !== 1 ? "s" : "") + ": consecutive ports of a host pair with one cause merged";
    const tbody = document.querySelector("#failures tbody");
    const trs = rows.map(failureRow);
    tbody.replaceChildren(...(trs.length ? trs : [el("tr", { class: "empty" }, el("td", { colspan: "8" }, "Every expected check passes."))]));
    const more = document.getElementById("failures-more");
    more.hidden = f.total <= rows.length;
    document.getElementById("failures-shown").textContent = rows.length;
  }

  async function moreFailures() {
    const have = data.failures.rows.length + (shownRows ? shownRows.length : 0);
    try {
      const page = await getJSON(links.failures + "?offset=" + have + "&limit=200");
      shownRows = (shownRows || []).concat(page.rows);
      applyFailures();
    } catch (err) {
      document.getElementById("failures-shown").textContent += " (could not load more: " + err.message + ")";
    }
  }
  async function reloadFailures() { // after a refresh: the rows the person had opened, again
    if (!shownRows) return;
    const n = shownRows.length;
    try {
      const page = await getJSON(links.failures + "?offset=" + data.failures.rows.length + "&limit=" + Math.min(500, n));
      shownRows = page.rows;
    } catch (err) { shownRows = null; }
    applyFailures();
  }

  const roleName = (key) => (data.roles.find((r) => r.role === key) || { name: key }).name;

  function pairLine(c) {
    const extra = c.verdict === "pass"
      ? (c.latency_ms ? " · " + c.latency_ms[0].toFixed(1) + (c.latency_ms[1] !== c.latency_ms[0] ? "–" + c.latency_ms[1].toFixed(1) : "") + " ms" : "")
      : " · " + c.cause + (c.side ? " · " + c.side : "");
    const stated = c.direction_stated === false ? " · direction not stated by the spec" : "";
    return el("div", { class: "pair verdict-" + c.verdict + (picked === c.check_id ? " picked" : ""), "data-check": c.check_id },
      pill(c.verdict), " ", el("span", { class: "mono" }, c.src_host + " → " + c.dst_host + ":" + c.ports),
      c.count > 1 ? el("span", { class: "muted" }, " (" + c.count + " ports)") : null,
      el("span", { class: "muted" }, extra + stated),
      el("div", { class: "addr mono" }, c.src_address + " → " + c.dst_address),
      c.verdict !== "pass" ? el("div", { class: "diagnosis" }, c.diagnosis) : null,
      c.hop ? el("div", { class: "hop" }, c.hop) : null);
  }

  function connects(x) {
    return [...new Set(x.flows.flatMap((f) =>
      f.direction === "reverse" ? [roleName(x.destination) + " → " + roleName(x.source)]
        : f.direction === "both" ? [roleName(x.source) + " → " + roleName(x.destination), roleName(x.destination) + " → " + roleName(x.source)]
          : [roleName(x.source) + " → " + roleName(x.destination)]))].join(", ");
  }

  function edgeDetails(i) {
    const out = [
      el("h2", {}, "Interaction " + i.id + ": " + i.title),
      el("dl", { class: "facts" },
        el("dt", {}, "verdict"), el("dd", {}, pill(i.verdict), " " + i.passed + "/" + i.total + " pass, " + i.failed + " fail, " + i.unknown + " unknown"),
        el("dt", {}, "connects"), el("dd", {}, connects(i)),
        el("dt", {}, "modes"), el("dd", {}, i.modes.join(", ") || "none"),
        i.interconnect ? el("dt", {}, "path") : null, i.interconnect ? el("dd", {}, "across the site-to-site interconnect") : null),
      el("div", { id: "history" }),
      el("h3", {}, "Ports"),
    ];
    for (const f of i.flows) {
      const who = f.direction === "reverse" ? roleName(i.destination) + " connects"
        : f.direction === "both" ? "either side connects: direction not stated by the spec"
          : roleName(i.source) + " connects";
      const box = el("div", { class: "port", "data-ports": f.ports },
        el("div", { class: "port-head" }, el("span", { class: "ports" }, "TCP " + f.ports), el("span", { class: "muted" }, f.service + " · " + who + (f.expect === "closed" ? " · must be closed" : ""))),
        el("div", { class: "muted" }, f.passed + "/" + f.checks + " host pairs × ports pass"),
        f.purpose ? el("div", { class: "muted" }, f.purpose) : null);
      for (const c of f.rows) box.append(pairLine(c));
      if (!f.checks) box.append(el("div", { class: "muted" }, "no host pair in the inventory"));
      else if (f.runs > f.rows.length) box.append(el("div", { class: "muted" }, (f.runs - f.rows.length) + " more rows in the table below"));
      out.push(box);
    }
    out.push(...pathsSection(i.paths));
    return out;
  }

  function roleDetails(r) {
    const out = [
      el("h2", {}, r.name),
      el("dl", { class: "facts" },
        el("dt", {}, "role"), el("dd", { class: "mono" }, r.role),
        el("dt", {}, "site"), el("dd", {}, r.site),
        el("dt", {}, "agent"), el("dd", {}, r.agent ? r.agents_reporting + " of " + r.hosts_total + " hosts reporting" : "none: probed as it is")),
      el("h3", {}, "Hosts (" + r.hosts_total + ")"),
    ];
    out.push(r.hosts.length ? el("ul", {}, ...r.hosts.map((h) => el("li", {}, el("span", { class: "mono" }, h.name + " " + h.address),
      h.listeners ? el("span", { class: "muted" }, " · " + (h.listeners - h.down.length) + "/" + h.listeners + " listeners up" + (h.down.length ? " (" + h.down.join(", ") + ")" : "")) : null)))
      : el("p", { class: "muted" }, "no host of this role in the inventory"));
    if (r.hosts_total > r.hosts.length) out.push(el("p", { class: "muted" }, (r.hosts_total - r.hosts.length) + " more hosts"));
    out.push(el("h3", {}, "Ports it must accept"));
    out.push(r.ports.length ? el("ul", {}, ...r.ports.map((p) => el("li", { class: "mono" }, "TCP " + p.ports + " (" + p.service + ", interaction " + p.interaction + ")"))) : el("p", { class: "muted" }, "none"));
    out.push(el("h3", {}, "Interactions"));
    out.push(el("ul", {}, ...r.interactions.map((i) => el("li", {}, pill(i.verdict), " " + i.id + ": " + i.title + " (" + i.passed + "/" + i.total + ")"))));
    out.push(el("div", { id: "history" }));
    out.push(el("h3", {}, "Failing and unknown checks (" + r.failing_total + " rows)"));
    for (const c of r.failing) out.push(pairLine(c));
    if (r.failing_total > r.failing.length) out.push(el("p", { class: "muted" }, (r.failing_total - r.failing.length) + " more in the table below"));
    if (r.vms) {
      out.push(el("h3", {}, "VM readiness (" + r.vms.total + ")"), el("p", { class: "muted" }, vmStates(r.vms)), ...vmItems(r.vms));
      if (r.vms.total > r.vms.rows.length) out.push(el("p", { class: "muted" }, (r.vms.total - r.vms.rows.length) + " more VMs in the JSON report"));
    }
    return out;
  }

  // -- history: a timeline of outages and the changes (GET /api/v1/history) -----------------
  const when = (iso) => Date.parse(iso);
  function timeline(h, title) {
    const changes = (h.changes || []).slice().sort((a, b) => when(a.at) - when(b.at));
    const outages = h.outages || [];
    const now = Date.parse(data.generated_at) || Date.now();
    const times = changes.map((c) => when(c.at)).concat(outages.map((o) => when(o.start)));
    const start = times.length ? Math.min(...times) : now - 3600e3;
    const span = Math.max(1, now - start);
    const pct = (t) => (Math.max(0, Math.min(1, (t - start) / span)) * 100).toFixed(2) + "%";
    const lanes = [...new Set(outages.map((o) => o.check_id).concat(changes.map((c) => c.check_id)))];
    const box = el("div", { class: "timeline" }, el("h3", { class: "named" }, title));
    if (!lanes.length) { box.append(el("p", { class: "muted" }, "no change recorded yet")); return box; }
    for (const id of lanes.slice(0, 8)) {
      const lane = el("div", { class: "lane", "data-check": id, title: id });
      for (const o of outages.filter((x) => x.check_id === id)) {
        const end = o.end ? when(o.end) : now;
        const seg = el("span", { class: "outage" + (o.end ? "" : " open"), title: "outage " + o.start + " – " + (o.end || "now") });
        seg.style.left = pct(when(o.start));
        seg.style.width = "calc(" + pct(end) + " - " + pct(when(o.start)) + " + 2px)";
        lane.append(seg);
      }
      for (const c of changes.filter((x) => x.check_id === id)) {
        const tick = el("span", { class: "change", title: c.at + " " + c.verdict + " " + (c.cause || "") });
        tick.style.left = pct(when(c.at));
        lane.append(tick);
      }
      box.append(lane);
    }
    if (lanes.length > 8) box.append(el("p", { class: "muted" }, (lanes.length - 8) + " more checks changed"));
    box.append(el("div", { class: "axis" }, el("span", {}, new Date(start).toISOString().replace(".000", "")), el("span", {}, "now")));
    const open = outages.filter((o) => !o.end);
    box.append(el("p", { class: "muted" }, outages.length + " outage" + (outages.length !== 1 ? "s" : "") + (open.length ? ", " + open.length + " still open (failing since " + open.map((o) => o.start).sort()[0] + ")" : "") + " · " + changes.length + " change" + (changes.length !== 1 ? "s" : "")));
    box.append(el("ol", {}, ...changes.slice(-12).reverse().map((c) => el("li", {}, el("span", { class: "mono" }, c.at), " ", pill(c.verdict), " " + (c.state || "") + (c.cause ? " · " + c.cause : ""), lanes.length > 1 ? el("span", { class: "muted" }, " " + c.check_id) : null))));
    return box;
  }

  let historyAsked = 0; // the newest history asked for: an older answer arriving later is dropped
  async function showHistory() {
    const slot = document.getElementById("history");
    if (!slot || !live || !links.history) return;
    let query, title;
    if (picked) { query = "check=" + encodeURIComponent(picked); title = "History of " + picked; }
    else if (selected && selected.kind === "edge") { query = "interaction=" + encodeURIComponent(selected.key); title = "History of interaction " + selected.key; }
    else return;
    const mine = ++historyAsked;
    try {
      const h = await getJSON(links.history + "?" + query);
      if (mine !== historyAsked) return;
      const now = document.getElementById("history");
      if (now) now.replaceChildren(timeline(h, title));
    } catch (err) {
      if (mine !== historyAsked) return;
      const now = document.getElementById("history");
      if (now) now.replaceChildren(el("p", { class: "muted" }, err.status === 404 ? "no history on this controller" : "history not available (" + err.message + ")"));
    }
  }

  async function detailsOf(kind, key) {
    const name = (kind === "edge" ? "interaction:" : "role:") + key;
    if (snapshot) return snapshot[name] || null;
    const have = details[name];
    if (have && have.at === version) return have.doc;
    const url = (kind === "edge" ? links.interaction : links.role) + encodeURIComponent(key);
    try {
      const doc = await getJSON(url);
      details[name] = { at: version, doc };
      return doc;
    } catch (err) {
      if (err.status === 404) return null;
      if (have) return have.doc; // the last one, while the controller does not answer
      throw err;
    }
  }

  function markSelected() {
    document.querySelectorAll(".selected").forEach((n) => n.classList.remove("selected"));
    if (!selected) return;
    if (selected.kind === "edge") document.querySelectorAll('svg [data-interaction="' + selected.key + '"]').forEach((n) => n.classList.add("selected"));
    else {
      const g = document.querySelector('.role[data-role="' + selected.key + '"]');
      if (g) g.classList.add("selected");
    }
  }

  let asked = 0;
  async function applyDetails(scroll) {
    markSelected();
    if (!selected) return;
    const panel = document.getElementById("details");
    const mine = ++asked;
    const { kind, key } = selected;
    let doc;
    try { doc = await detailsOf(kind, key); } catch (err) {
      if (mine === asked) panel.replaceChildren(el("p", { class: "hint" }, "details not available (" + err.message + ")"));
      return;
    }
    if (mine !== asked) return; // another click came first
    if (!doc) {
      panel.replaceChildren(el("p", { class: "hint" }, (kind === "edge" ? "Interaction " : "Role ") + key + " is no longer in the report."));
      return;
    }
    panel.replaceChildren(...(kind === "edge" ? edgeDetails(doc) : roleDetails(doc)));
    if (scroll) {
      const r = panel.getBoundingClientRect();
      if (r.top > window.innerHeight || r.bottom < 0) panel.scrollIntoView({ block: "start", behavior: "instant" });
    }
    showHistory();
  }

  function apply() { applyHeader(); applyPicture(); applyVms(); applyFailures(); applyDetails(false); }

  function select(kind, key) { selected = { kind, key }; picked = null; applyDetails(true); }
  function pick(checkId, interaction) {
    picked = checkId;
    document.querySelectorAll(".picked").forEach((n) => n.classList.remove("picked"));
    document.querySelectorAll('[data-check="' + checkId + '"]').forEach((n) => n.classList.add("picked"));
    if (!selected || document.getElementById("history") === null) { selected = { kind: "edge", key: String(interaction) }; applyDetails(true); }
    else showHistory();
  }
  const svg = document.getElementById("topology");
  function onPick(ev) {
    const edge = ev.target.closest(".edges .edge, .edge-label");
    const role = ev.target.closest(".role");
    if (edge) select("edge", edge.dataset.interaction);
    else if (role) select("role", role.dataset.role);
  }
  svg.addEventListener("click", onPick);
  svg.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); onPick(ev); } });
  document.getElementById("failures").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-check]");
    if (tr && live) pick(tr.dataset.check, tr.dataset.interaction);
  });
  document.getElementById("details").addEventListener("click", (ev) => {
    const p = ev.target.closest(".pair[data-check]");
    if (p && live && selected) pick(p.dataset.check, selected.kind === "edge" ? selected.key : "");
  });
  document.getElementById("failures-next").addEventListener("click", moreFailures);

  async function poll() {
    const status = document.getElementById("live");
    try {
      data = await getJSON(links.summary);
      version += 1;
      applyHeader(); applyPicture(); applyVms(); applyFailures();
      await reloadFailures();
      applyDetails(false);
      status.classList.remove("stale");
      status.textContent = "live · refreshes every " + refresh + " s · updated " + new Date().toLocaleTimeString();
    } catch (err) {
      status.classList.add("stale");
      status.textContent = "controller unreachable (" + err.message + ") · retrying every " + refresh + " s";
    }
  }
  apply();
  if (live) setInterval(poll, refresh * 1000);
})();
