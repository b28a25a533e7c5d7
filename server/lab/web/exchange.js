// One HTTP exchange as the page sends and receives it: sent with fetch(), written out as
// text (request and response), and offered as curl and as Python with m2mauth.client.

// The admin token, if the server wants one: kept in this page's memory only (never in
// storage, never in a snippet: snippets read it from $M2MAUTH_ADMIN_TOKEN).
export const session = { adminToken: null };

export class AdminTokenNeeded extends Error {}

const MASK = "•••••• (the admin token)";

function shQuote(text) {
  return "'" + String(text).replace(/'/g, "'\\''") + "'";
}

function pyStr(text) {
  return JSON.stringify(String(text));
}

// "Basic <b64>" -> "id:secret", or null when it is not a Basic header we can read.
export function decodeBasic(value) {
  const match = /^Basic\s+([A-Za-z0-9+/=]+)$/.exec(value || "");
  if (!match) return null;
  try {
    const bytes = Uint8Array.from(atob(match[1]), (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  } catch {
    return null;
  }
}

// RFC 6749 §2.3.1: id and secret are form-encoded before they are joined and base64'd.
export function basicHeader(clientId, secret) {
  const enc = (s) => encodeURIComponent(s).replace(/%20/g, "+");
  const bytes = new TextEncoder().encode(enc(clientId) + ":" + enc(secret));
  return "Basic " + btoa(String.fromCharCode(...bytes));
}

function abbreviated(token) {
  return token.length > 60 ? `${token.slice(0, 24)}…${token.slice(-12)} (${token.length} chars)`
    : token;
}

function requestText(rec) {
  const lines = [`${rec.method} ${rec.url}`];
  for (const [name, value] of Object.entries(rec.headers)) {
    if (name === "Authorization" && rec.admin) {
      lines.push(`${name}: Bearer ${MASK}`);
    } else if (name === "Authorization" && value.startsWith("Basic ")) {
      lines.push(`${name}: ${value}`);
      lines.push(`    (base64 of "${decodeBasic(value)}": client id, colon, secret)`);
    } else if (name === "Authorization" && value.startsWith("Bearer ")) {
      lines.push(`${name}: Bearer ${abbreviated(value.slice(7))}`);
    } else {
      lines.push(`${name}: ${value}`);
    }
  }
  lines.push("(the browser adds Host, Origin on POST, Sec-Fetch-Site, User-Agent …)");
  if (rec.body) lines.push("", rec.body);
  return lines.join("\n");
}

function responseText(rec) {
  if (rec.error) return `no response: ${rec.error}`;
  const lines = [`HTTP ${rec.status} ${rec.statusText}`.trim()];
  for (const [name, value] of rec.responseHeaders) lines.push(`${name}: ${value}`);
  lines.push("");
  lines.push(rec.json !== undefined ? JSON.stringify(rec.json, null, 2) : rec.text);
  return lines.join("\n");
}

export function curlOf(rec) {
  const parts = ["curl -i"];
  if (rec.method !== "GET") parts.push(`-X ${rec.method}`);
  for (const [name, value] of Object.entries(rec.headers)) {
    const basic = name === "Authorization" ? decodeBasic(value) : null;
    if (rec.admin && name === "Authorization") {
      parts.push(`-H "Authorization: Bearer $M2MAUTH_ADMIN_TOKEN"`);
    } else if (basic !== null && !/[%+]/.test(basic)) {
      parts.push(`-u ${shQuote(basic)}`);
    } else {
      parts.push(`-H ${shQuote(`${name}: ${value}`)}`);
    }
  }
  if (rec.body) parts.push(`--data-raw ${shQuote(rec.body)}`);
  parts.push(shQuote(rec.url));
  return parts.join(" \\\n  ");
}

function genericPython(rec) {
  const lines = ["import requests", ""];
  const headers = Object.entries(rec.headers).filter(([n]) => !(rec.admin && n === "Authorization"));
  if (rec.admin && session.adminToken) lines.splice(0, 0, "import os");
  const args = [pyStr(rec.method), pyStr(rec.url)];
  const hdr = headers.filter(([n]) => !(rec.jsonBody !== undefined && n === "Content-Type"))
    .map(([n, v]) => `${pyStr(n)}: ${pyStr(v)}`);
  if (rec.admin && session.adminToken) {
    hdr.push(`"Authorization": "Bearer " + os.environ["M2MAUTH_ADMIN_TOKEN"]`);
  }
  if (hdr.length) args.push(`headers={${hdr.join(", ")}}`);
  if (rec.jsonBody !== undefined) args.push(`json=${toPython(rec.jsonBody)}`);
  else if (rec.body) args.push(`data=${pyStr(rec.body)}`);
  args.push("timeout=10");
  lines.push(`response = requests.request(${args.join(", ")})`);
  lines.push("print(response.status_code, response.headers.get(\"WWW-Authenticate\"), response.text)");
  return lines.join("\n");
}

function toPython(value) {
  return JSON.stringify(value).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False")
    .replace(/\bnull\b/g, "None");
}

// Sends one request and returns its record; `python` (optional) is the snippet that does
// the same with m2mauth.client, else a plain requests call is offered.
export async function send(spec) {
  const rec = {
    label: spec.label || "",
    method: spec.method || "GET",
    url: new URL(spec.url, location.origin).href,
    headers: { ...(spec.headers || {}) },
    body: spec.body || "",
    jsonBody: spec.json,
    admin: Boolean(spec.admin),
  };
  if (spec.json !== undefined) {
    rec.body = JSON.stringify(spec.json);
    rec.headers["Content-Type"] = "application/json";
  }
  const init = { method: rec.method, headers: { ...rec.headers }, cache: "no-store",
    credentials: "omit", redirect: "manual" };
  if (rec.body) init.body = rec.body;
  try {
    const response = await fetch(rec.url, init);
    rec.status = response.status;
    rec.statusText = response.statusText;
    rec.responseHeaders = [...response.headers.entries()];
    rec.text = await response.text();
    try {
      rec.json = JSON.parse(rec.text);
    } catch {
      rec.json = undefined;
    }
  } catch (err) {
    rec.error = String(err && err.message ? err.message : err);
    rec.status = 0;
    rec.responseHeaders = [];
  }
  rec.python = spec.python || genericPython(rec);
  rec.curl = curlOf(rec);
  return rec;
}

export function header(rec, name) {
  const found = (rec.responseHeaders || []).find(([n]) => n.toLowerCase() === name.toLowerCase());
  return found ? found[1] : null;
}

// The issuer's path on this server ("" at the root, "/a" for an issuer http://host/a): the
// page is served at BASE + "/playground", and everything it calls is under BASE too.
export const BASE = location.pathname.replace(/\/playground\/?$/, "");
// RFC 8414 section 3.1: the well-known segment goes before the issuer's path.
export const METADATA_URL = "/.well-known/oauth-authorization-server" + BASE;

// A call to the admin API; with a token configured on the server, the page asks for it.
export async function admin(method, path, json, label) {
  const headers = {};
  if (session.adminToken) headers.Authorization = "Bearer " + session.adminToken;
  const rec = await send({ label: label || `${method} ${path}`, method, url: BASE + path, json,
    headers, admin: true });
  if (rec.status === 401 && /m2mauth admin/.test(header(rec, "WWW-Authenticate") || "")) {
    const box = document.getElementById("admin-token-box");
    box.hidden = false;
    const err = new AdminTokenNeeded("This server needs its admin token for the admin API: "
      + "enter it in the field at the top of the page, then run this again.");
    err.record = rec;
    throw err;
  }
  if (rec.status === 403 && rec.json && rec.json.error === "access_denied") {
    const err = new Error("The admin API refused: " + (rec.json.error_description || ""));
    err.record = rec;
    throw err;
  }
  if (rec.status < 200 || rec.status >= 300) {
    const err = new Error(`${method} ${path} answered ${rec.status}: ${rec.text}`);
    err.record = rec;
    throw err;
  }
  return rec;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

export { el };

async function copy(text, status, details) {
  try {
    await navigator.clipboard.writeText(text);
    status.textContent = "copied";
  } catch {
    // No clipboard permission (or not a secure context): show it to select by hand.
    details.open = true;
    status.textContent = "select the text below and copy it";
  }
}

// The record as an element with data-exchange; `note` explains what it shows.
export function render(rec, note) {
  const curlDetails = el("details", { class: "snippet" }, el("summary", { text: "curl" }),
    el("pre", { "data-curl": "", text: rec.curl }));
  const pyDetails = el("details", { class: "snippet" }, el("summary", { text: "Python" }),
    el("pre", { "data-python": "", text: rec.python }));
  const status = el("span", { role: "status", class: "copy-status" });
  const curlButton = el("button", { type: "button", class: "copy-curl",
    "aria-label": `Copy as curl: ${rec.label}`, text: "Copy as curl" });
  const pyButton = el("button", { type: "button", class: "copy-python",
    "aria-label": `Copy as Python: ${rec.label}`, text: "Copy as Python" });
  curlButton.addEventListener("click", () => copy(rec.curl, status, curlDetails));
  pyButton.addEventListener("click", () => copy(rec.python, status, pyDetails));
  const statusClass = rec.status >= 200 && rec.status < 300 ? "ok" : "refused";
  const node = el("div", { class: `exchange ${statusClass}`, "data-exchange": "",
    "data-status": String(rec.status) },
    el("h4", { text: `${rec.label} → ${rec.status || "no answer"}` }),
    note ? el("p", { class: "note", text: note }) : null,
    el("div", { class: "pair" },
      el("pre", { class: "request", "data-request": "", "aria-label": "request",
        text: requestText(rec) }),
      el("pre", { class: "response", "data-response": "", "aria-label": "response",
        text: responseText(rec) })),
    el("div", { class: "copy" }, curlButton, pyButton, status),
    curlDetails, pyDetails);
  return node;
}
