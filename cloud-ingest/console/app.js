// The Twinlake console: sign in with an API token (kept in this tab's sessionStorage,
// never in a URL or localStorage), then the fleet from /v1/twins, updated live from the
// /v1/events stream read with fetch (so the token travels as a header). Everything that
// comes from devices or users is put into the page as text, never as HTML.

const PAGE = 50;
const $ = (id) => document.getElementById(id);
let twins = new Map();
let page = 0;
let stream = null;

function token() { return sessionStorage.getItem("twinlake-token"); }

async function api(path, init = {}) {
  const headers = { ...(init.headers || {}), Authorization: `Bearer ${token()}` };
  const r = await fetch(path, { ...init, headers });
  if (!r.ok) {
    let why = "";
    try { why = (await r.json()).error || ""; } catch { /* not JSON */ }
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

function matches(t, q, state) {
  const c = t.connection || {};
  const inSync = Object.keys((t.state && t.state.delta) || {}).length === 0;
  if (state === "online" && !c.online) return false;
  if (state === "offline" && c.online) return false;
  if (state === "unsynced" && inSync) return false;
  if (!q) return true;
  const hay = [t.device, t.user, c.gateway || "", JSON.stringify(t.tags || {})].join(" ").toLowerCase();
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
    tr.append(
      cell(t.device), cell(t.user),
      cell(c.online ? "online" : "offline", c.online ? "online" : "offline"),
      cell(c.last_seen ? new Date(c.last_seen).toISOString() : "never"),
      cell(c.gateway || ""), cell(c.protocol || ""),
      cell(inSync ? "yes" : "no", inSync ? "" : "unsynced"),
      cell(Object.entries(t.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
    );
    body.append(tr);
  }
  $("devices").replaceChildren(body);
}

async function loadFleet() {
  const r = await api("/v1/twins");
  twins = new Map((await r.json()).map((t) => [key(t), t]));
  render();
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
        .then((r) => r.json()).then((t) => { twins.set(key(t), t); render(); })
        .catch(showError);
    }
  };
  try {
    const r = await api("/v1/events", { signal: stream.signal });
    $("live").textContent = "live";
    const reader = r.body.getReader();
    const text = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += text.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue;
        try {
          const ev = JSON.parse(data);
          const u = ev.user || (ev.key && ev.key.user);
          const d = ev.device || (ev.key && ev.key.device);
          if (u && d) pending.add(`${u}/${d}`);
        } catch { /* a comment or another shape */ }
      }
      if (pending.size && !timer) timer = setTimeout(refresh, 250);
    }
  } catch (e) {
    if (e.name !== "AbortError") showError(e);
  }
  $("live").textContent = "";
}

async function start() {
  showError(null);
  $("signin").hidden = true;
  $("signout").hidden = false;
  $("fleet").hidden = false;
  try {
    await loadFleet();
    follow();
  } catch (e) {
    showError(e);
    if (String(e.message).startsWith("401")) signOut();
  }
}

function signOut() {
  sessionStorage.removeItem("twinlake-token");
  if (stream) stream.abort();
  twins = new Map();
  $("fleet").hidden = true;
  $("signout").hidden = true;
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
