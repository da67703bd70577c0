// Shared by the dashboard pages: the access token, the client, small DOM helpers.
import { RayflowClient } from "./client.js";
import { API_ORIGINS } from "./config.js";

const TOKEN_KEY = "rayflow.token";

// A token can arrive in the URL fragment (`#key=…` from `rayflow dev`, or
// `#token=…` for a run's public token); the fragment never reaches a server
// log. It is kept in localStorage and removed from the address bar.
function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = params.get("key") || params.get("token");
  if (token) {
    localStorage.setItem(TOKEN_KEY, token);
    params.delete("key");
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
  return token;
}

export function getToken() {
  return tokenFromFragment() || localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

// The API's base URL: the page's origin, unless `?api=` names another one the
// operator allowed (RAYFLOW_DASHBOARD_API_ORIGINS, served as config.js). Every
// request carries the secret key or token kept in localStorage, so a link with
// `?api=https://elsewhere` must never be followed: the page keeps its own
// origin and says why.
let refusedApi = null;

function allowedApi(asked) {
  let url;
  try {
    url = new URL(asked, location.href);
  } catch {
    return false;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return false;
  return url.origin === location.origin || API_ORIGINS.includes(url.origin);
}

export function apiBase() {
  const asked = new URLSearchParams(location.search).get("api");
  if (!asked) return location.origin;
  if (allowedApi(asked)) return asked;
  refusedApi = asked;
  return location.origin;
}

export function makeClient() {
  const client = new RayflowClient({ baseURL: apiBase(), accessToken: getToken() });
  if (refusedApi) showError(null);
  return client;
}

/** Keep `?api=` when linking between dashboard pages. */
export function pageURL(path, params = {}) {
  const q = new URLSearchParams(params);
  const api = new URLSearchParams(location.search).get("api");
  if (api && allowedApi(api)) q.set("api", api);
  const qs = q.toString();
  return qs ? `${path}?${qs}` : path;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function statusBadge(status) {
  return el("span", { class: `badge status-${(status || "unknown").toLowerCase()}`, "data-status": status || "" }, status || "?");
}

export function fmtTime(value) {
  if (!value) return "—";
  const d = new Date(typeof value === "number" ? value : Date.parse(value));
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleTimeString();
}

export function fmtDuration(startedAt, finishedAt) {
  const start = startedAt ? Date.parse(startedAt) : NaN;
  if (Number.isNaN(start)) return "—";
  const end = finishedAt ? Date.parse(finishedAt) : Date.now();
  const s = Math.max(0, (end - start) / 1000);
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} m ${Math.round(s % 60)} s`;
}

export function pretty(value) {
  if (value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

/** Show an error (or clear it with null) in the page's #error banner. */
export function showError(err) {
  const banner = document.getElementById("error");
  if (!banner) return;
  if (refusedApi) {
    const refusal =
      `?api=${refusedApi} is not an allowed API origin (RAYFLOW_DASHBOARD_API_ORIGINS); ` +
      `this page uses its own origin, ${location.origin}`;
    const status = err?.status;
    err = { message: err ? `${refusal} — ${err.message || err}` : refusal, status };
  }
  if (!err) {
    banner.hidden = true;
    banner.textContent = "";
    return;
  }
  banner.hidden = false;
  banner.textContent = err.message || String(err);
  if (err.status === 401 || err.status === 403) {
    banner.textContent += " — paste the secret key printed by `rayflow dev` (or a run's token) above.";
  }
}

/** Wire the token form that every page has in its header. */
export function setupTokenForm(onChange) {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  if (!form || !input) return;
  input.value = getToken();
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    setToken(input.value.trim());
    onChange?.();
  });
}
