// The Twinlake console: sign in with an API token (kept in this tab's sessionStorage,
// never in a URL or localStorage), then the fleet from /v1/twins, updated live from the
// /v1/events stream read with fetch (so the token travels as a header). Everything that
// comes from devices or users is put into the page as text, never as HTML.

const PAGE = 50;
const $ = (id) => document.getElementById(id);
let twins = new Map();
// Device names from the registry ("user/device" -> name): a person's words, shown as text.
let names = new Map();
let page = 0;
let stream = null;

function token() { return sessionStorage.getItem("twinlake-token"); }

async function api(path, init = {}) {
  const headers = { ...(init.headers || {}), Authorization: `Bearer ${token()}` };
  const r = await fetch(path, { ...init, headers });
  if (!r.ok) {
    let why = "";
    try {
      const e = (await r.json()).error;
      why = typeof e === "object" && e !== null ? e.message || JSON.stringify(e) : e || "";
    } catch { /* not JSON */ }
    throw new Error(`${r.status} ${r.statusText}${why ? ": " + why : ""}`);
  }
  return r;
}

function showError(e) { $("error").textContent = e ? String(e.message || e) : ""; }

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function key(t) { return `${t.user}/${t.device}`; }

// A button (with class `cls`, which decides who is offered it) that runs `action`, an
// API call, and shows its error if it fails.
function actionButton(label, cls, action) {
  const b = document.createElement("button");
  b.textContent = label;
  if (cls) b.className = cls;
  b.addEventListener("click", async () => {
    showError(null);
    try { await action(); } catch (e) { showError(e); }
  });
  return b;
}

function matches(t, q, state) {
  const c = t.connection || {};
  const inSync = Object.keys((t.state && t.state.delta) || {}).length === 0;
  if (state === "online" && !c.online) return false;
  if (state === "offline" && c.online) return false;
  if (state === "unsynced" && inSync) return false;
  if (!q) return true;
  // Tags as the list shows them (`site=lab`).
  const tags = Object.entries(t.tags || {}).map(([k, v]) => `${k}=${v}`);
  const hay = [t.device, names.get(key(t)) || "", t.user, c.gateway || "", ...tags].join(" ").toLowerCase();
  return hay.includes(q);
}

function render() {
  const q = $("search").value.trim().toLowerCase();
  const state = $("state").value;
  const all = [...twins.values()].sort((a, b) => key(a).localeCompare(key(b)));
  const shown = all.filter((t) => matches(t, q, state));
  const online = all.filter((t) => (t.connection || {}).online).length;
  $("counts").textContent = `${shown.length} shown of ${all.length} devices, ${online} online`;
  const pages = Math.max(1, Math.ceil(shown.length / PAGE));
  page = Math.min(page, pages - 1);
  $("page").textContent = `page ${page + 1} of ${pages}`;
  const body = document.createDocumentFragment();
  for (const t of shown.slice(page * PAGE, (page + 1) * PAGE)) {
    const c = t.connection || {};
    const inSync = Object.keys((t.state && t.state.delta) || {}).length === 0;
    const tr = document.createElement("tr");
    const first = document.createElement("td");
    const link = document.createElement("a");
    link.href = `#/device/${encodeURIComponent(t.user)}/${encodeURIComponent(t.device)}`;
    link.textContent = t.device;
    first.append(link);
    const named = names.get(key(t));
    if (named && named !== t.device) {
      const span = document.createElement("span");
      span.className = "hint";
      span.textContent = ` ${named}`;
      first.append(span);
    }
    tr.append(
      first, cell(t.user),
      cell(c.online ? "online" : "offline", c.online ? "online" : "offline"),
      cell(c.last_seen ? new Date(c.last_seen).toISOString() : "never"),
      cell(c.gateway || ""), cell(c.protocol || ""),
      cell(inSync ? "yes" : "no", inSync ? "" : "unsynced"),
      cell(Object.entries(t.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
    );
    body.append(tr);
  }
  // The list is live: a device link that had keyboard focus keeps it across the re-render.
  const focused = document.activeElement && $("devices").contains(document.activeElement)
    ? document.activeElement.getAttribute("href") : null;
  $("devices").replaceChildren(body);
  if (focused) {
    const again = [...$("devices").querySelectorAll("a")].find((a) => a.getAttribute("href") === focused);
    if (again) again.focus();
  }
}

async function loadFleet() {
  const [r, d] = await Promise.all([api("/v1/twins"), api("/v1/devices")]);
  twins = new Map((await r.json()).map((t) => [key(t), t]));
  names = new Map((await d.json()).filter((x) => x.name).map((x) => [key(x), x.name]));
  render();
}

// Reads a Server-Sent Events response, handing each event's data to `onData`.
async function readEvents(r, onData) {
  const reader = r.body.getReader();
  const text = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += text.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) onData(data);
    }
  }
}

// Reads the SSE stream with fetch; a twin that changed is fetched again (coalesced).
async function follow() {
  stream = new AbortController();
  const pending = new Set();
  let timer = null;
  const refresh = () => {
    timer = null;
    const keys = [...pending];
    pending.clear();
    for (const k of keys) {
      const [u, d] = k.split("/");
      api(`/v1/users/${encodeURIComponent(u)}/devices/${encodeURIComponent(d)}/twin`)
        .then((r) => r.json()).then((t) => {
          twins.set(key(t), t);
          render();
          if (routed === key(t)) showDevice(t.user, t.device);
        })
        .catch(showError);
    }
  };
  try {
    const r = await api("/v1/events", { signal: stream.signal });
    $("live").textContent = "live";
    await readEvents(r, (data) => {
      try {
        const ev = JSON.parse(data);
        if (ev.event === "alarm") {
          if (!$("alarms").hidden) loadAlarms().catch(showError);
          return;
        }
        const u = ev.user || (ev.key && ev.key.user);
        const d = ev.device || (ev.key && ev.key.device);
        if (u && d) pending.add(`${u}/${d}`);
      } catch { /* a comment or another shape */ }
      if (pending.size && !timer) timer = setTimeout(refresh, 250);
    });
  } catch (e) {
    if (e.name !== "AbortError") showError(e);
  }
  $("live").textContent = "";
}

const pretty = (v) => JSON.stringify(v ?? {}, null, 2);
let current = null;
// The device the page shows now ("user/device"), set as soon as the route changes, so a
// late answer for another device is dropped.
let routed = null;

async function showDevice(u, d) {
  const r = await api(`/v1/users/${encodeURIComponent(u)}/devices/${encodeURIComponent(d)}/twin`);
  const t = await r.json();
  if (routed !== `${u}/${d}`) return;
  current = t;
  const c = t.connection || {};
  $("device-title").textContent = `${t.user}/${t.device}`;
  $("device-name").textContent = names.get(key(t)) || "";
  $("device-conn").textContent = `${c.online ? "online" : "offline"}, last seen ${c.last_seen ? new Date(c.last_seen).toISOString() : "never"}, gateway ${c.gateway || "none"}, protocol ${c.protocol || "?"}`;
  $("reported").textContent = pretty(t.state && t.state.reported);
  $("desired").textContent = pretty(t.state && t.state.desired);
  $("delta").textContent = pretty(t.state && t.state.delta);
  $("version").textContent = String(t.version);
  renderResources(t);
  // A live refresh leaves the editor alone while it is being edited.
  if (document.activeElement !== $("desired-edit")) $("desired-edit").value = pretty(t.state && t.state.desired);
}

// The device's properties: listed, set (JSON) and deleted with the control scope.
const propsPath = () => `/v3/users/${encodeURIComponent(current.user)}/devices/${encodeURIComponent(current.device)}/properties`;
async function loadProperties() {
  const props = await (await api(propsPath())).json();
  const body = document.createDocumentFragment();
  for (const p of props) {
    const tr = document.createElement("tr");
    tr.append(cell(p.property), cell(JSON.stringify(p.value)));
    const td = document.createElement("td");
    td.append(actionButton("Delete", "control-only", async () => {
      await api(`${propsPath()}/${encodeURIComponent(p.property)}`, { method: "DELETE" });
      await loadProperties();
    }));
    tr.append(td);
    body.append(tr);
  }
  $("properties").replaceChildren(body);
}
$("property-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError(null);
  try {
    const value = JSON.parse($("prop-value").value);
    await api(`${propsPath()}/${encodeURIComponent($("prop-name").value.trim())}`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ value }),
    });
    await loadProperties();
  } catch (err) { showError(err); }
});

// The user's endpoints, each callable with a JSON payload (control scope): what a device's
// CALL_ENDPOINT does, queued and delivered by the cloud.
async function loadEndpoints() {
  const u = encodeURIComponent(current.user);
  const eps = await (await api(`/v1/users/${u}/endpoints`)).json();
  const body = document.createDocumentFragment();
  for (const ep of eps) {
    const tr = document.createElement("tr");
    tr.append(cell(ep.name), cell(ep.method || "POST"), cell(ep.url));
    const td = document.createElement("td");
    td.append(actionButton("Call", "control-only", async () => {
      const payload = JSON.parse($("endpoint-payload").value || "{}");
      await api(`/v1/users/${u}/endpoints/${encodeURIComponent(ep.name)}/call`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(payload),
      });
      td.dataset.called = "queued";
    }));
    tr.append(td);
    body.append(tr);
  }
  $("endpoints").replaceChildren(body);
}

// The resources the device described (`fn`: 1 run, 2 input, 3 output, 4 input/output),
// each with the control its kind calls for, through /v3/…/resources/{path}.
const KINDS = { 1: "run", 2: "input", 3: "output", 4: "input/output" };

function resourcePaths(api, prefix = []) {
  const out = [];
  for (const [name, entry] of Object.entries(api || {})) {
    const path = [...prefix, name];
    if (entry && typeof entry.fn === "number") out.push([path.join("/"), entry.fn]);
    if (entry && entry["/"]) out.push(...resourcePaths(entry["/"], path));
  }
  return out;
}

let shownResources = "";
let charts = null;

// Live charts of a device's outputs, on demand (a stream makes the device sample, which it
// pays for): the last hour from SQL, then the resource's event stream (read with fetch, so
// the token is a header). Points are kept to the last 3,600.
const SVG = "http://www.w3.org/2000/svg";
const quote = (s) => s.replaceAll('"', '""');
const lit = (s) => s.replaceAll("'", "''");

function drawChart(box) {
  const pts = box.points;
  box.dataset.points = String(pts.length);
  if (!pts.length) return;
  const t0 = pts[0][0], t1 = pts[pts.length - 1][0] || t0 + 1;
  const vs = pts.map((p) => p[1]);
  const lo = Math.min(...vs), hi = Math.max(...vs);
  const x = (t) => (300 * (t - t0)) / Math.max(1, t1 - t0) + 10;
  const y = (v) => 80 - (70 * (v - lo)) / Math.max(1e-9, hi - lo);
  box.line.setAttribute("points", pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "));
  box.label.textContent = `${box.path}: ${vs[vs.length - 1]} (min ${lo}, max ${hi}, ${pts.length} points)`;
}

function addPoint(box, t, v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return;
  box.points.push([t, v]);
  if (box.points.length > 3600) box.points.shift();
  drawChart(box);
}

async function streamInto(box, url, signal) {
  const r = await api(url, { signal });
  await readEvents(r, (data) => {
    try {
      const m = JSON.parse(data);
      addPoint(box, m.ts || Date.now(), m.value);
    } catch { /* a comment */ }
  });
}

function stopCharts() {
  if (charts) charts.abort();
  charts = null;
  $("charts").replaceChildren();
}

// An empty chart of `name` (a resource path, or a SQL result's column).
function chartBox(name) {
  const box = document.createElement("div");
  box.className = "chart";
  box.path = name;
  box.points = [];
  box.label = document.createElement("div");
  box.label.textContent = `${name}: waiting for values`;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 320 90");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${name} over time`);
  box.line = document.createElementNS(SVG, "polyline");
  svg.append(box.line);
  box.append(box.label, svg);
  return box;
}

function startChart(t, path) {
  if (!charts) charts = new AbortController();
  const signal = charts.signal;
  if ([...$("charts").children].some((c) => c.path === path)) return;
  const box = chartBox(path);
  box.dataset.resource = path;
  $("charts").append(box);
  const back = `SELECT time, value FROM "${quote(path)}" WHERE device = '${lit(t.device)}' AND owner = '${lit(t.user)}' AND time > now() - interval '1 hour' ORDER BY time`;
  sql(back, "json")
    .then((r) => r.json())
    .then((rows) => {
      const live = box.points;
      box.points = [];
      for (const row of rows) addPoint(box, Date.parse(row.time), row.value);
      for (const [ts, v] of live) addPoint(box, ts, v);
    })
    .catch(() => { /* no such table yet, or no value column: the stream still fills it */ });
  const url = `/v1/users/${encodeURIComponent(t.user)}/devices/${encodeURIComponent(t.device)}/streams/${path.split("/").map(encodeURIComponent).join("/")}`;
  streamInto(box, url, signal).catch((e) => { if (e.name !== "AbortError") box.label.textContent = `${path}: ${e.message}`; });
}

function renderResources(t) {
  const base = `/v3/users/${encodeURIComponent(t.user)}/devices/${encodeURIComponent(t.device)}/resources/`;
  const list = resourcePaths(t.resources);
  // A live refresh keeps the rows (and what was read or typed in them) unless they changed.
  const signature = base + JSON.stringify(list);
  if (signature === shownResources) return;
  shownResources = signature;
  stopCharts();
  const rows = list.map(([path, fn]) => {
    const tr = document.createElement("tr");
    tr.dataset.resource = path;
    const value = cell("");
    value.className = "value";
    const actions = document.createElement("td");
    const call = async (method, body) => {
      showError(null);
      try {
        const init = { method, headers: { "Content-Type": "application/json" } };
        if (body !== undefined) init.body = body;
        const r = await api(base + path.split("/").map(encodeURIComponent).join("/"), init);
        const text = await r.text();
        value.textContent = text || "ok";
      } catch (err) { showError(err); }
    };
    if (fn === 3 || fn === 2 || fn === 4) {
      const read = document.createElement("button");
      read.textContent = "Read";
      read.addEventListener("click", () => call("GET"));
      actions.append(read);
    }
    if (fn === 3) {
      const chart = document.createElement("button");
      chart.textContent = "Chart";
      chart.addEventListener("click", () => startChart(t, path));
      actions.append(chart);
    }
    if (fn === 2 || fn === 4) {
      const input = document.createElement("input");
      input.placeholder = "JSON value";
      input.className = "control-only";
      const send = document.createElement("button");
      send.textContent = fn === 4 ? "Call" : "Write";
      send.className = "control-only";
      send.addEventListener("click", () => {
        try { JSON.parse(input.value); } catch { showError(new Error("the value is not JSON")); return; }
        call("POST", input.value);
      });
      actions.append(input, send);
    }
    if (fn === 1) {
      const run = document.createElement("button");
      run.textContent = "Run";
      run.className = "control-only";
      run.addEventListener("click", () => call("POST"));
      actions.append(run);
    }
    tr.append(cell(path), cell(KINDS[fn] || String(fn)), value, actions);
    return tr;
  });
  $("resources").replaceChildren(...rows);
}

// The views: #/ (fleet), #/device/{user}/{device}, #/register, #/alarms, #/sql, #/admin.
async function route() {
  showError(null);
  for (const id of ["fleet", "device", "register", "alarms", "sql", "admin"]) $(id).hidden = true;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  routed = parts[0] === "device" && parts.length === 3 ? `${parts[1]}/${parts[2]}` : null;
  if (!routed) {
    stopCharts();
    shownResources = "";
  }
  try {
    if (parts[0] === "device" && parts.length === 3) {
      $("device").hidden = false;
      await showDevice(parts[1], parts[2]);
      if (current && routed === key(current)) {
        await loadProperties();
        await loadEndpoints();
      }
    } else if (parts[0] === "admin") {
      $("admin").hidden = false;
      $("secret").hidden = true;
      await loadAdmin();
    } else if (parts[0] === "alarms") {
      $("alarms").hidden = false;
      await loadAlarms();
      await loadRules();
    } else if (parts[0] === "sql") {
      $("sql").hidden = false;
      await listTables();
    } else if (parts[0] === "register") {
      $("register").hidden = false;
      $("registered").hidden = true;
    } else {
      $("fleet").hidden = false;
      await loadFleet();
    }
  } catch (e) {
    showError(e);
    if (String(e.message).startsWith("401")) signOut();
  }
}

// What the token may do decides what is offered (the API refuses anyway).
async function whoami() {
  const me = await (await api("/v1/whoami")).json();
  const has = (s) => me.scopes.includes(s) || me.scopes.includes("admin");
  $("who").textContent = `${me.name}${me.user ? " (" + me.user + ")" : " (platform)"}: ${me.scopes.join(", ")}`;
  document.body.classList.toggle("can-desire", has("write-desired"));
  document.body.classList.toggle("can-admin", has("admin"));
  document.body.classList.toggle("can-control", has("control"));
  if (me.user) {
    $("reg-user").value = me.user;
    $("rules-user").value = me.user;
  }
}

async function start() {
  showError(null);
  try {
    await whoami();
  } catch (e) {
    showError(e);
    if (String(e.message).startsWith("401")) signOut();
    return;
  }
  $("signin").hidden = true;
  $("signout").hidden = false;
  $("nav").hidden = false;
  await route();
  follow();
}

$("desired-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError(null);
  try {
    const desired = JSON.parse($("desired-edit").value);
    const t = current;
    await api(`/v1/users/${encodeURIComponent(t.user)}/devices/${encodeURIComponent(t.device)}/twin`, {
      method: "PATCH",
      headers: { "Content-Type": "application/json", "If-Match": `"${t.version}"` },
      body: JSON.stringify({ desired }),
    });
    await showDevice(t.user, t.device);
  } catch (err) {
    showError(err);
  }
});

// Ready-to-paste settings for a registered device. The host is this console's; a device
// behind a gateway points at the gateway instead.
function showSnippets(user, device, cred) {
  const host = location.hostname;
  $("snippet-thinger").textContent = [
    `#define THINGER_SERVER "${host}"  // or the gateway the device reaches`,
    "#define _DISABLE_TLS_  // plain TCP, port 25200; without it TLS on 25202 (a certificate the board trusts)",
    "#include <ThingerESP32.h>",
    `#define USERNAME "${user}"`,
    `#define DEVICE_ID "${device}"`,
    `#define DEVICE_CREDENTIAL "${cred}"`,
    "ThingerESP32 thing(USERNAME, DEVICE_ID, DEVICE_CREDENTIAL);",
    "void setup() {",
    '  thing.add_wifi("SSID", "password");',
    '  thing["temperature"] >> outputValue(21.5);',
    "}",
    "void loop() { thing.handle(); }",
    "// Linux client: the same USERNAME, DEVICE_ID and DEVICE_CREDENTIAL in src/main.cpp.",
  ].join("\n");
  $("snippet-sdk").textContent =
    `cargo run -p twinlake-sdk --example sensor -- ${host}:25200 ${user} ${device} ${cred}`;
  $("snippet-http").textContent =
    `curl -d '{"temperature":21.5}' http://<gateway>:8081/api/v1/${user}:${device}:${cred}/telemetry\n` +
    `coap-client-notls -m post -t json -e '{"temperature":21.5}' coap://<gateway>/api/v1/${user}:${device}:${cred}/telemetry`;
}

$("register-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError(null);
  try {
    const user = $("reg-user").value.trim();
    const body = { device: $("reg-device").value.trim(), tags: JSON.parse($("reg-tags").value || "{}") };
    const gw = $("reg-gateway").value.trim();
    if (gw) body.gateway = gw;
    const r = await api(`/v1/users/${encodeURIComponent(user)}/devices`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const j = await r.json();
    const cred = j.credential;
    $("reg-credential").textContent = cred;
    showSnippets(user, body.device, cred);
    $("registered").hidden = false;
  } catch (err) {
    showError(err);
  }
});
// Alarms: the `alarms` table (the token's user's, or everyone's for a platform token),
// newest first; acknowledge and clear need the control scope.
async function loadAlarms() {
  const open = $("alarm-state").value === "open";
  const where = open ? "WHERE state <> 'cleared' " : "";
  const r = await sql(
    "SELECT id, severity, state, rule, \"user\", coalesce(device, key) AS what, raised_at, count, value, message " +
      `FROM alarms ${where}ORDER BY id DESC LIMIT 500`,
    "json",
  );
  const rows = await r.json();
  $("alarm-counts").textContent = `${rows.length} ${open ? "open" : ""} alarm${rows.length === 1 ? "" : "s"}`;
  const body = document.createDocumentFragment();
  for (const a of rows) {
    const tr = document.createElement("tr");
    tr.append(cell(a.id), cell(a.severity, `sev-${a.severity}`), cell(a.state, `state-${a.state}`), cell(a.rule),
      cell(a.user), cell(a.what), cell(new Date(a.raised_at).toLocaleString()), cell(a.count),
      cell(a.value ?? ""), cell(a.message));
    const td = document.createElement("td");
    const act = (label, op, when) => {
      if (!when) return;
      td.append(actionButton(label, "control-only", async () => {
        await api(`/v1/users/${encodeURIComponent(a.user)}/alarms/${a.id}/${op}`, { method: "POST" });
        await loadAlarms();
      }));
    };
    act("Acknowledge", "ack", a.state === "active");
    act("Clear", "clear", a.state !== "cleared");
    tr.append(td);
    body.append(tr);
  }
  $("alarm-rows").replaceChildren(body);
}
$("alarm-state").addEventListener("change", () => loadAlarms().catch(showError));

// Rules of one user: listed, deleted, and created from JSON (admin scope; fixed ones from
// the config file cannot be changed here).
const rulesPath = () => `/v1/users/${encodeURIComponent($("rules-user").value.trim())}/rules`;
async function loadRules() {
  if (!$("rules-user").value.trim()) return;
  const rules = await (await api(rulesPath())).json();
  const body = document.createDocumentFragment();
  for (const r of rules) {
    const tr = document.createElement("tr");
    const acts = (r.actions || []).map((a) => Object.keys(a).filter((k) => k !== "on").join("+")).join(", ");
    tr.append(cell(r.id), cell(JSON.stringify(r.when)), cell(r.severity), cell(acts), cell(r.description || ""));
    const td = document.createElement("td");
    if (!r.fixed) {
      td.append(actionButton("Delete", "admin-only", async () => {
        await api(`${rulesPath()}/${encodeURIComponent(r.id)}`, { method: "DELETE" });
        await loadRules();
      }));
    } else {
      td.textContent = "fixed";
    }
    tr.append(td);
    body.append(tr);
  }
  $("rule-rows").replaceChildren(body);
}
$("rules-load").addEventListener("click", () => loadRules().catch(showError));
$("rule-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError(null);
  try {
    await api(`${rulesPath()}/${encodeURIComponent($("rule-id").value.trim())}`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(JSON.parse($("rule-json").value)),
    });
    await loadRules();
  } catch (err) { showError(err); }
});

// SQL: POST /v1/sql; results as a table (text only), or as a CSV file.
async function sql(text, format) {
  return api("/v1/sql", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sql: text, format }),
  });
}

// The tables with their columns (each a disclosure; its button starts a query on it).
async function listTables() {
  const r = await sql("SELECT table_name, column_name, data_type FROM information_schema.columns " +
    "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position", "json");
  const tables = new Map();
  for (const row of await r.json()) {
    if (!tables.has(row.table_name)) tables.set(row.table_name, []);
    tables.get(row.table_name).push(`${row.column_name} ${row.data_type}`);
  }
  const items = [...tables].map(([table, cols]) => {
    const li = document.createElement("li");
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = table;
    const list = document.createElement("ul");
    list.append(...cols.map((c) => { const item = document.createElement("li"); item.textContent = c; return item; }));
    const query = document.createElement("button");
    query.type = "button";
    query.textContent = "Query";
    query.setAttribute("aria-label", `Query ${table}`);
    query.addEventListener("click", () => { $("sql-text").value = `SELECT * FROM "${table}" LIMIT 100`; });
    details.append(summary, list, query);
    li.append(details);
    return li;
  });
  $("tables").replaceChildren(...items);
}

// The most rows the page shows; past it the page stops reading and says so.
const SHOWN_ROWS = 10000;

// Reads an NDJSON result up to `cap` rows. `more`: the page stopped reading with rows left;
// `cut`: the server ended the result early (its row or time limit hit after the first
// bytes, when the status could no longer say so).
async function readRows(r, cap, controller) {
  const reader = r.body.getReader();
  const text = new TextDecoder();
  const rows = [];
  let buf = "";
  const take = (line) => { if (line.trim()) rows.push(JSON.parse(line)); };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += text.decode(value, { stream: true });
      const lines = buf.split("\n");
      buf = lines.pop();
      for (const line of lines) take(line);
      if (rows.length > cap) {
        controller.abort();
        return { rows: rows.slice(0, cap), more: true, cut: false };
      }
    }
  } catch (e) {
    if (e instanceof SyntaxError) throw e;
    return { rows, more: false, cut: true };
  }
  take(buf);
  return { rows: rows.slice(0, cap), more: rows.length > cap, cut: false };
}

function showRows(rows) {
  const cols = rows.length ? Object.keys(rows[0]) : [];
  const head = document.createElement("tr");
  head.append(...cols.map((c) => { const th = document.createElement("th"); th.textContent = c; return th; }));
  $("sql-head").replaceChildren(head);
  $("sql-rows").replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    tr.append(...cols.map((c) => cell(typeof row[c] === "object" && row[c] !== null ? JSON.stringify(row[c]) : String(row[c] ?? ""))));
    return tr;
  }));
  sqlCharts(rows, cols);
}

$("sql-run").addEventListener("click", async () => {
  showError(null);
  $("sql-info").textContent = "running…";
  const started = performance.now();
  const controller = new AbortController();
  try {
    const r = await api("/v1/sql", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sql: $("sql-text").value, format: "ndjson" }),
      signal: controller.signal,
    });
    const { rows, more, cut } = await readRows(r, SHOWN_ROWS, controller);
    showRows(rows);
    const ms = Math.round(performance.now() - started);
    $("sql-info").textContent = more
      ? `the first ${rows.length} rows in ${ms} ms; the result has more (add a LIMIT, or download CSV)`
      : cut
        ? `${rows.length} rows in ${ms} ms, then the server cut the result short: a row or time limit (sql.max_rows, sql.timeout)`
        : `${rows.length} rows in ${ms} ms`;
  } catch (err) {
    $("sql-info").textContent = "";
    // 413: over sql.max_rows; 504: over sql.timeout. Shown as the API says.
    showError(err);
  }
});

// A result with a time column (ISO timestamps) charts its numeric columns against it
// (the first four).
function sqlCharts(rows, cols) {
  const iso = /^\d{4}-\d{2}-\d{2}T/;
  const time = cols.find((c) => rows.length && rows.every((r) => typeof r[c] === "string" && iso.test(r[c])));
  const numeric = cols.filter((c) => c !== time && rows.some((r) => typeof r[c] === "number"));
  const boxes = time ? numeric.slice(0, 4).map((c) => {
    const box = chartBox(c);
    box.dataset.column = c;
    const pts = rows.map((r) => [Date.parse(r[time]), r[c]]).sort((a, b) => a[0] - b[0]);
    for (const [t, v] of pts) addPoint(box, t, v);
    return box;
  }) : [];
  $("sql-charts").replaceChildren(...boxes);
}

$("sql-csv").addEventListener("click", async () => {
  showError(null);
  try {
    const blob = await (await sql($("sql-text").value, "csv")).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "twinlake.csv";
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (err) {
    showError(err);
  }
});

// Admin: gateways (link state; a new one's token shown once) and API tokens (create with
// scopes, shown once; revoke).
const when = (ms) => (ms ? new Date(ms).toISOString() : "");

async function loadAdmin() {
  const gws = await (await api("/v1/gateways")).json();
  $("gateways").replaceChildren(...gws.map((g) => {
    const tr = document.createElement("tr");
    const q = g.queues;
    const queues = q ? `${q.buffer_rows} rows buffered, ${q.upload_files} files (${q.upload_bytes} B) to upload, ` +
      `${q.unacked_batches} link batches unacknowledged, ${q.devices_connected} devices` : "";
    tr.append(cell(g.id + (g.in_process ? " (in the cloud)" : "")), cell(g.linked ? "linked" : "not linked", g.linked ? "online" : "offline"),
      cell(when(g.created)), cell(queues), cell(when(g.reported_at)));
    return tr;
  }));
  const toks = await (await api("/v1/tokens")).json();
  $("tokens").replaceChildren(...toks.map((t) => {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.append(actionButton("Revoke", null, async () => {
      await api(`/v1/tokens/${encodeURIComponent(t.name)}`, { method: "DELETE" });
      await loadAdmin();
    }));
    tr.append(cell(t.name), cell(t.user || "platform"), cell((t.scopes || []).join(", ")), cell(when(t.created)), td);
    return tr;
  }));
}

function showSecret(value) {
  $("secret-value").textContent = value;
  $("secret").hidden = false;
}

$("gateway-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError(null);
  try {
    const users = $("gw-users").value.split(",").map((u) => u.trim()).filter(Boolean);
    const r = await api("/v1/gateways", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: $("gw-id").value.trim(), users }),
    });
    showSecret((await r.json()).token);
    await loadAdmin();
  } catch (err) { showError(err); }
});

$("token-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError(null);
  try {
    const scopes = [...document.querySelectorAll(".tok-scope:checked")].map((c) => c.value);
    const body = { name: $("tok-name").value.trim(), scopes };
    const user = $("tok-user").value.trim();
    if (user) body.user = user;
    const r = await api("/v1/tokens", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    showSecret((await r.json()).token);
    await loadAdmin();
  } catch (err) { showError(err); }
});

// Admin: a user's endpoints (webhook templates): listed, edited as JSON, deleted.
const epPath = (name) => `/v1/users/${encodeURIComponent($("ep-user").value.trim())}/endpoints` +
  (name === undefined ? "" : `/${encodeURIComponent(name)}`);
async function loadEndpointDefs() {
  const eps = await (await api(epPath())).json();
  $("ep-rows").replaceChildren(...eps.map((ep) => {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.append(actionButton("Edit", null, async () => {
      const { name, ...def } = ep;
      $("ep-name").value = name;
      $("ep-json").value = JSON.stringify(def, null, 2);
    }), actionButton("Delete", null, async () => {
      await api(epPath(ep.name), { method: "DELETE" });
      await loadEndpointDefs();
    }));
    tr.append(cell(ep.name), cell(ep.method || "POST"), cell(ep.url), cell(ep.body ?? "(the payload)"), td);
    return tr;
  }));
}
$("ep-load").addEventListener("click", () => { showError(null); loadEndpointDefs().catch(showError); });
$("ep-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError(null);
  try {
    const def = JSON.parse($("ep-json").value);
    await api(epPath($("ep-name").value.trim()), {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(def),
    });
    await loadEndpointDefs();
  } catch (err) { showError(err); }
});

window.addEventListener("hashchange", () => { if (token()) route(); });

function signOut() {
  sessionStorage.removeItem("twinlake-token");
  if (stream) stream.abort();
  twins = new Map();
  for (const id of ["fleet", "device", "register", "sql", "admin", "signout", "nav"]) $(id).hidden = true;
  $("signin").hidden = false;
}

$("signin").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("twinlake-token", $("token").value.trim());
  $("token").value = "";
  start();
});
$("signout").addEventListener("click", signOut);
$("search").addEventListener("input", () => { page = 0; render(); });
$("state").addEventListener("change", () => { page = 0; render(); });
$("prev").addEventListener("click", () => { page = Math.max(0, page - 1); render(); });
$("next").addEventListener("click", () => { page += 1; render(); });

if (token()) start(); else $("signin").hidden = false;
