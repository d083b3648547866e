// netcheck topology page: re-applies the JSON report to the server-rendered picture.
// Builds DOM with textContent only (report strings are never parsed as HTML).
(function () {
  "use strict";
  const body = document.body;
  const refresh = parseInt(body.dataset.refresh || "", 10);
  const reportUrl = body.dataset.reportUrl;
  let data = JSON.parse(document.getElementById("report-data").textContent);
  let selected = null; // {kind: "edge"|"role", key: string}

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
    }
    return node;
  }
  const pill = (v) => el("span", { class: "pill verdict-" + v }, v);
  const setVerdict = (node, v) => {
    node.classList.remove("verdict-pass", "verdict-fail", "verdict-unknown", "verdict-none");
    node.classList.add("verdict-" + v);
  };
  const interactionVerdict = (i) => (i.total ? i.verdict : "unknown");

  function roleVerdict(role) {
    const vs = data.interactions
      .filter((i) => (i.source === role || i.destination === role) && i.total)
      .map((i) => i.verdict);
    if (!vs.length) return "none";
    if (vs.includes("fail")) return "fail";
    return vs.includes("unknown") ? "unknown" : "pass";
  }

  function applyPicture() {
    for (const i of data.interactions) {
      const v = interactionVerdict(i);
      document.querySelectorAll('[data-interaction="' + i.id + '"]').forEach((n) => setVerdict(n, v));
      const label = document.querySelector('.edge-label[data-interaction="' + i.id + '"] text');
      if (label) label.textContent = i.id + ": " + i.passed + "/" + i.total;
    }
    for (const r of data.roles) {
      const g = document.querySelector('.role[data-role="' + r.role + '"]');
      if (g) setVerdict(g, roleVerdict(r.role));
    }
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
    const items = data.gates.map((g) => {
      const who = g.vm ? g.mode + " (" + g.vm + ")" : g.mode;
      const node = el("div", { class: "gate decision-" + g.decision, "data-mode": who, title: g.reasons.slice(0, 5).join("\n") },
        el("span", { class: "gate-mode" }, who),
        el("span", { class: "gate-decision" }, g.decision.toUpperCase()),
        g.decision !== "go" ? el("span", { class: "gate-blocking" }, g.blocking.length + " blocking") : null);
      return node;
    });
    banner.replaceChildren(...(items.length ? items : [el("div", { class: "gate none" }, "no gate decision")]));
  }

  function notPassing(checks) {
    return checks.filter((c) => c.verdict === "fail").concat(checks.filter((c) => c.verdict === "unknown"));
  }
  const checkLabel = (c) => c.src_host + " -> " + c.dst_host + ":" + c.port + " (" + c.service + ")";

  function applyFailures() {
    const rows = notPassing(data.checks);
    document.getElementById("failures-count").textContent = rows.length;
    const tbody = document.querySelector("#failures tbody");
    const trs = rows.map((c) => el("tr", { class: "verdict-" + c.verdict, "data-check": c.check_id },
      el("td", {}, pill(c.verdict)), el("td", {}, c.interaction),
      el("td", { class: "mono" }, checkLabel(c)), el("td", { class: "mono" }, c.cause),
      el("td", {}, c.diagnosis)));
    tbody.replaceChildren(...(trs.length ? trs : [el("tr", { class: "empty" }, el("td", { colspan: "5" }, "Every expected check passes."))]));
  }

  const roleName = (key) => (data.roles.find((r) => r.role === key) || { name: key }).name;

  function pairLine(c) {
    const extra = c.verdict === "pass"
      ? (c.latency_s !== null ? " · " + (c.latency_s * 1000).toFixed(1) + " ms" : "")
      : " · " + c.cause + (c.side ? " · " + c.side : "");
    const stated = c.direction_stated === false ? " · direction not stated by the spec" : "";
    return el("div", { class: "pair verdict-" + c.verdict, "data-check": c.check_id },
      pill(c.verdict), " ", el("span", { class: "mono" }, c.src_host + " → " + c.dst_host + ":" + c.port),
      el("span", { class: "muted" }, extra + stated),
      c.verdict !== "pass" ? el("div", { class: "diagnosis" }, c.diagnosis) : null);
  }

  function edgeDetails(id) {
    const i = data.interactions.find((x) => String(x.id) === id);
    // who connects to whom, from the flows (the title's order is not the direction)
    const connects = (x) => [...new Set(x.flows.flatMap((f) =>
      f.direction === "reverse" ? [roleName(x.destination) + " → " + roleName(x.source)]
        : f.direction === "both" ? [roleName(x.source) + " → " + roleName(x.destination), roleName(x.destination) + " → " + roleName(x.source)]
          : [roleName(x.source) + " → " + roleName(x.destination)]))].join(", ");
    if (!i) return [el("p", { class: "hint" }, "Interaction " + id + " is no longer in the report.")];
    const checks = data.checks.filter((c) => c.interaction === i.id);
    const out = [
      el("h2", {}, "Interaction " + i.id + ": " + i.title),
      el("dl", { class: "facts" },
        el("dt", {}, "verdict"), el("dd", {}, pill(interactionVerdict(i)), " " + i.passed + "/" + i.total + " pass, " + i.failed + " fail, " + i.unknown + " unknown"),
        el("dt", {}, "connects"), el("dd", {}, connects(i)),
        el("dt", {}, "modes"), el("dd", {}, i.modes.join(", ") || "none"),
        i.interconnect ? el("dt", {}, "path") : null, i.interconnect ? el("dd", {}, "across the site-to-site interconnect") : null),
      el("h3", {}, "Ports"),
    ];
    for (const f of i.flows) {
      const [lo, hi] = f.ports.split("-").map(Number);
      const who = f.direction === "reverse" ? roleName(i.destination) + " connects"
        : f.direction === "both" ? "either side connects: direction not stated by the spec"
          : roleName(i.source) + " connects";
      const inFlow = checks.filter((c) => c.port >= lo && c.port <= (hi || lo) && (f.direction === "both" || c.direction === f.direction));
      const bad = notPassing(inFlow);
      const passed = inFlow.length - bad.length;
      const box = el("div", { class: "port", "data-ports": f.ports },
        el("div", { class: "port-head" }, el("span", { class: "ports" }, "TCP " + f.ports), el("span", { class: "muted" }, f.service + " · " + who + (f.expect === "closed" ? " · must be closed" : ""))),
        el("div", { class: "muted" }, passed + "/" + inFlow.length + " host pairs × ports pass"),
        f.purpose ? el("div", { class: "muted" }, f.purpose) : null);
      for (const c of bad) box.append(pairLine(c));
      if (!inFlow.length) box.append(el("div", { class: "muted" }, "no host pair in the inventory"));
      else if (!bad.length && inFlow.length <= 6) for (const c of inFlow) box.append(pairLine(c));
      out.push(box);
    }
    return out;
  }

  function roleDetails(key) {
    const r = data.roles.find((x) => x.role === key);
    if (!r) return [el("p", { class: "hint" }, "Role " + key + " is no longer in the report.")];
    const inters = data.interactions.filter((i) => i.source === key || i.destination === key);
    const out = [
      el("h2", {}, r.name),
      el("dl", { class: "facts" },
        el("dt", {}, "role"), el("dd", { class: "mono" }, r.role),
        el("dt", {}, "site"), el("dd", {}, r.site),
        el("dt", {}, "agent"), el("dd", {}, r.agent ? r.agents_reporting + " of " + r.hosts.length + " hosts reporting" : "none: probed as it is")),
      el("h3", {}, "Hosts"),
    ];
    out.push(r.hosts.length ? el("ul", {}, ...r.hosts.map((h) => {
      const ls = data.listeners[h.name] || [];
      const bad = ls.filter((l) => l.state !== "listening");
      return el("li", {}, el("span", { class: "mono" }, h.name + " " + h.address),
        ls.length ? el("span", { class: "muted" }, " · " + (ls.length - bad.length) + "/" + ls.length + " listeners up" + (bad.length ? " (" + bad.map((l) => l.port + " " + l.state).join(", ") + ")" : "")) : null);
    })) : el("p", { class: "muted" }, "no host of this role in the inventory"));
    out.push(el("h3", {}, "Ports it must accept"));
    const ports = [];
    for (const i of inters) for (const f of i.flows) {
      const listener = f.direction === "reverse" ? i.source : i.destination;
      if (listener === key) ports.push("TCP " + f.ports + " (" + f.service + ", interaction " + i.id + ")");
    }
    out.push(ports.length ? el("ul", {}, ...ports.map((p) => el("li", { class: "mono" }, p))) : el("p", { class: "muted" }, "none"));
    out.push(el("h3", {}, "Interactions"));
    out.push(el("ul", {}, ...inters.map((i) => el("li", {}, pill(interactionVerdict(i)), " " + i.id + ": " + i.title + " (" + i.passed + "/" + i.total + ")"))));
    const bad = notPassing(data.checks.filter((c) => c.src_role === key || c.dst_role === key));
    out.push(el("h3", {}, "Failing and unknown checks (" + bad.length + ")"));
    for (const c of bad.slice(0, 200)) out.push(pairLine(c));
    if (bad.length > 200) out.push(el("p", { class: "muted" }, (bad.length - 200) + " more in the table below"));
    return out;
  }

  function applyDetails() {
    document.querySelectorAll(".selected").forEach((n) => n.classList.remove("selected"));
    if (!selected) return;
    const panel = document.getElementById("details");
    if (selected.kind === "edge") {
      document.querySelectorAll('[data-interaction="' + selected.key + '"]').forEach((n) => n.classList.add("selected"));
      panel.replaceChildren(...edgeDetails(selected.key));
    } else {
      const g = document.querySelector('.role[data-role="' + selected.key + '"]');
      if (g) g.classList.add("selected");
      panel.replaceChildren(...roleDetails(selected.key));
    }
  }

  function apply() { applyHeader(); applyPicture(); applyFailures(); applyDetails(); }

  function select(kind, key) { selected = { kind, key }; applyDetails(); }
  const svg = document.getElementById("topology");
  function onPick(ev) {
    const edge = ev.target.closest(".edges .edge, .edge-label");
    const role = ev.target.closest(".role");
    if (edge) select("edge", edge.dataset.interaction);
    else if (role) select("role", role.dataset.role);
  }
  svg.addEventListener("click", onPick);
  svg.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); onPick(ev); } });

  async function poll() {
    const live = document.getElementById("live");
    try {
      const resp = await fetch(reportUrl, { cache: "no-store", headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      data = await resp.json();
      apply();
      live.classList.remove("stale");
      live.textContent = "live · refreshes every " + refresh + " s · updated " + new Date().toLocaleTimeString();
    } catch (err) {
      live.classList.add("stale");
      live.textContent = "controller unreachable (" + err.message + ") · retrying every " + refresh + " s";
    }
  }
  apply();
  if (refresh > 0) setInterval(poll, refresh * 1000);
})();
