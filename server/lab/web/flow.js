// What the steps and the lessons share: the page's state (metadata, client, token), the
// token request and the API call, each made as one recorded exchange.

import { admin, basicHeader, el, METADATA_URL, render, send } from "./exchange.js";

export const DEMO_CLIENT = { clientId: "demo-client", secret: "demo-secret",
  authMethod: "client_secret_basic", scopes: ["read", "write"], audiences: ["api://default"],
  registered: false };

export const state = {
  texts: null,       // lessons.json
  meta: null,        // the RFC 8414 metadata
  client: null,      // the client of step 2 (null: not chosen yet, or step 2 failed)
  clientProblem: "", // why step 2 failed
  token: null,       // the access token of step 3
};

// A lookup in one of lessons.json's tables by the name itself, never an inherited member
// ("constructor", "toString", "__proto__" are claim names like any other).
export function meaning(texts, name) {
  return texts && Object.hasOwn(texts, name) && typeof texts[name] === "string" ? texts[name]
    : "";
}

// A JSON value as the tables show it: strings as they are, lists of strings space-separated,
// anything else (objects, nested lists, numbers, booleans, null) as JSON.
export function shown(value) {
  if (typeof value === "string") return value;
  if (Array.isArray(value) && value.every((v) => typeof v === "string")) return value.join(" ");
  return JSON.stringify(value);
}

// The metadata's URLs name the configured issuer; the page calls the same paths on its own
// origin, so that it also works when opened as localhost for an issuer of 127.0.0.1.
export function local(url) {
  const u = new URL(url, location.origin);
  return location.origin + u.pathname + u.search;
}

export async function ensureMeta() {
  if (!state.meta) {
    const rec = await send({ url: METADATA_URL,
      label: "GET metadata" });
    if (rec.status !== 200 || !rec.json) throw new Error(`metadata answered ${rec.status}`);
    state.meta = rec.json;
  }
  return state.meta;
}

// Seconds on the server's clock (which the demo API reads too); the browser's as a fallback.
export async function serverNow() {
  try {
    return (await admin("GET", "/admin/clock")).json.now;
  } catch {
    return Date.now() / 1000;
  }
}

function pythonFetch(url, client, method, form) {
  const args = [`    ${JSON.stringify(url)},`, `    client_id=${JSON.stringify(client.clientId)},`,
    `    client_secret=${JSON.stringify(client.secret)},`,
    `    auth_method=${JSON.stringify(method)},`];
  if (form.scope) args.push(`    scope=${JSON.stringify(form.scope)},`);
  if (form.resource) args.push(`    resource=${JSON.stringify(form.resource)},`);
  return ["from m2mauth.client import OAuthError, fetch_token", "", "try:",
    "    token = fetch_token(", ...args.map((a) => "    " + a), "    )",
    "    print(token.access_token, token.expires_in, token.scope)",
    "except OAuthError as exc:  # one subclass per error: InvalidClient, InvalidScope, ...",
    "    print(exc.status, exc.error, exc.error_description, exc.retry_after)"].join("\n");
}

// POST grant_type=client_credentials; `form`: {scope, resource}.
export async function tokenRequest(client, form = {}, method = client.authMethod, label = "") {
  const meta = await ensureMeta();
  const body = new URLSearchParams({ grant_type: "client_credentials" });
  if (form.scope) body.set("scope", form.scope);
  if (form.resource) body.set("resource", form.resource);
  const headers = { "Content-Type": "application/x-www-form-urlencoded" };
  if (method === "client_secret_post") {
    body.set("client_id", client.clientId);
    body.set("client_secret", client.secret);
  } else {
    headers.Authorization = basicHeader(client.clientId, client.secret);
  }
  return send({ label: label || "POST token endpoint", method: "POST",
    url: local(meta.token_endpoint), headers, body: body.toString(),
    python: pythonFetch(meta.token_endpoint, client, method, form) });
}

export function demoUrl() {
  return location.origin + ((state.texts && state.texts.demo_resource) || "/demo/hello");
}

// GET the demo resource with `token` (null: no Authorization header at all).
export async function callApi(token, label = "GET /demo/hello", python = undefined) {
  const headers = token === null ? {} : { Authorization: "Bearer " + token };
  return send({ label, url: demoUrl(), headers, python });
}

// The RFC 6750 challenge's parameters: {scheme, realm, error, error_description, scope}.
export function challenge(value) {
  const found = { scheme: (value || "").split(/\s/, 1)[0] };
  for (const m of (value || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) found[m[1]] = m[2];
  return found;
}

// A block that explains: a table of name / value / meaning rows.
export function table(caption, rows) {
  const body = el("tbody");
  for (const [name, value, meaning] of rows) {
    body.append(el("tr", { "data-name": name }, el("th", { scope: "row", text: name }),
      el("td", { class: "value", text: value }), el("td", { class: "meaning", text: meaning })));
  }
  return el("table", {}, el("caption", { text: caption }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "name" }),
      el("th", { scope: "col", text: "value" }), el("th", { scope: "col", text: "what it means" }))),
    body);
}

export { render };
