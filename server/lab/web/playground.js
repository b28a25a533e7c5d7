// The playground: the five steps and the lessons, their texts from /playground/lessons.json
// (written once, in m2mauth/server/lab/lessons.py).

import { admin, AdminTokenNeeded, BASE, el, header, METADATA_URL, send, session } from "./exchange.js";
import { callApi, challenge, DEMO_CLIENT, ensureMeta, local, meaning, render, serverNow, shown,
  state, table, tokenRequest } from "./flow.js";
import { decodeJwt, verifySignature } from "./jwt.js";
import { LESSONS } from "./lessons.js";

const $ = (sel, root = document) => root.querySelector(sel);

// -- the steps --------------------------------------------------------------------------

function stepBox(name) {
  return $(`[data-step="${name}"]`);
}

function clear(box) {
  $(".exchanges", box).replaceChildren();
  $(".explain", box).replaceChildren();
  $(".outcome", box).textContent = "";
}

async function discover(box) {
  const rec = await send({ url: METADATA_URL,
    label: "GET " + METADATA_URL });
  $(".exchanges", box).append(render(rec, "RFC 8414 metadata: all a client needs to know, "
    + "found from the issuer URL alone."));
  if (rec.status !== 200 || !rec.json) throw new Error(`the metadata answered ${rec.status}`);
  state.meta = rec.json;
  const fields = state.texts.metadata_fields;
  const rows = Object.entries(rec.json).map(([name, value]) => [name, shown(value),
    meaning(fields, name)]);
  $(".explain", box).append(table("The metadata, field by field", rows));
  return `200: issuer ${rec.json.issuer}, token endpoint ${rec.json.token_endpoint}`;
}

// The secret methods the page can use, in the order it prefers them.
const SECRET_METHODS = ["client_secret_basic", "client_secret_post"];

function notAsTaught(why) {
  return new Error(`not as taught: ${why}`);
}

async function chooseClient(box) {
  state.client = null;
  state.token = null;
  try {
    state.client = await pickClient(box);
    state.clientProblem = "";
  } catch (err) {
    state.clientProblem = err.message;
    throw err;
  }
  return describeClient(box);
}

async function pickClient(box) {
  const choice = $('input[name="client-choice"]:checked', box).value;
  if (choice === "demo") {
    let rec = null;
    try {
      rec = await admin("GET", "/admin/clients", undefined, "GET /admin/clients");
    } catch (err) {
      if (err instanceof AdminTokenNeeded) throw err;
      if (err.record) $(".exchanges", box).append(render(err.record));
      $(".explain", box).append(el("p", { text: "(Listing clients needs the admin API: "
        + `${err.message}; the page assumes the demo client is registered.)` }));
    }
    if (rec === null) return { ...DEMO_CLIENT };
    $(".exchanges", box).append(render(rec, "The clients this server knows (never their "
      + "secrets)."));
    const clients = (rec.json && rec.json.clients) || [];
    const demo = clients.find((c) => c.client_id === DEMO_CLIENT.clientId);
    if (!demo) {
      throw notAsTaught(`${DEMO_CLIENT.clientId} is not one of this server's clients `
        + `(GET /admin/clients lists ${clients.map((c) => c.client_id).join(", ") || "none"}): `
        + "register a client here, or start the server with the demo client");
    }
    const methods = demo.auth_methods || [];
    const method = SECRET_METHODS.find((m) => methods.includes(m));
    if (!method) {
      throw notAsTaught(`${DEMO_CLIENT.clientId} may not authenticate with its secret here `
        + `(its methods: ${methods.join(", ") || "none"})`);
    }
    $("#token-auth-method").value = method;
    return { ...DEMO_CLIENT, authMethod: method, scopes: demo.scopes, audiences: demo.audiences };
  }
  const body = {
    scopes: $("#new-scopes").value.split(/\s+/).filter(Boolean),
    audiences: $("#new-audience").value.split(/\s+/).filter(Boolean),
    auth_methods: [$("#new-auth-method").value],
  };
  const wanted = $("#new-client-id").value.trim();
  if (wanted) body.client_id = wanted;
  let rec;
  try {
    rec = await admin("POST", "/admin/clients", body, "POST /admin/clients");
  } catch (err) {
    if (err.record) $(".exchanges", box).append(render(err.record));
    err.record = undefined;
    throw err;
  }
  $(".exchanges", box).append(render(rec, "The admin API answers the new client's secret "
    + "once; a real server hands it over through a secret store."));
  const c = rec.json;
  const client = { clientId: c.client_id, secret: c.client_secret,
    authMethod: c.auth_methods[0] || "client_secret_basic", scopes: c.scopes,
    audiences: c.audiences, registered: true };
  $("#token-auth-method").value = client.authMethod;
  $("#token-scope").value = client.scopes[0] || "";
  return client;
}

// The client of step 2; runs step 2 when there is none yet (or it failed, and may work now).
async function ensureClient() {
  if (!state.client) await runStep("client");
  if (!state.client) {
    throw new Error(`no usable client – step 2 failed: ${state.clientProblem || "unknown"}`);
  }
  return state.client;
}

function describeClient(box) {
  const c = state.client;
  $(".explain", box).append(table("The client", [
    ["client_id", c.clientId, "Its name at the server; in tokens as sub and client_id."],
    ["client_secret", c.secret, "Proves it is that client: keep it out of code and logs."],
    ["auth method", c.authMethod, c.authMethod === "client_secret_post"
      ? "client_id and client_secret travel in the form body."
      : "client_id:secret travel base64-encoded in Authorization: Basic."],
    ["scopes", c.scopes.join(" "), "What it may ask for; asking for more is invalid_scope."],
    ["audiences", c.audiences.join(" "), "The APIs it may get tokens for (resource, aud)."],
  ]));
  return `client ${c.clientId} (${c.authMethod}; scopes ${c.scopes.join(" ")}; audience `
    + `${c.audiences.join(" ")})`;
}

async function requestToken(box) {
  const client = await ensureClient();
  const form = { scope: $("#token-scope").value.trim(),
    resource: $("#token-resource").value.trim() };
  const method = $("#token-auth-method").value;
  const rec = await tokenRequest(client, form, method, "POST token endpoint");
  $(".exchanges", box).append(render(rec, method === "client_secret_post"
    ? "client_secret_post: the credentials are form fields of the body."
    : "client_secret_basic: the credentials are the Basic header (decoded beside it)."));
  if (rec.status !== 200) {
    const error = rec.json ? `${rec.json.error}: ${rec.json.error_description || ""}` : rec.text;
    throw new Error(`${rec.status} ${error}`);
  }
  state.token = rec.json.access_token;
  $(".explain", box).append(table("The token response (RFC 6749 §5.1)", [
    ["access_token", rec.json.access_token.slice(0, 32) + "…", "The JWT itself: step 4 takes it apart."],
    ["token_type", rec.json.token_type, "Bearer: whoever holds it may use it (RFC 6750)."],
    ["expires_in", String(rec.json.expires_in), "Seconds it lives: cache it that long, less a margin."],
    ["scope", rec.json.scope || "", "The scope granted."],
    ["Cache-Control", header(rec, "Cache-Control") || "", "no-store: no cache may keep a token."],
  ]));
  return `200: a ${rec.json.token_type} token, scope ${rec.json.scope}, `
    + `expires in ${rec.json.expires_in} s`;
}

async function ensureToken() {
  if (!state.token) await runStep("token");
  if (!state.token) throw new Error("no token: step 3 failed");
}

function when(seconds, now) {
  const delta = Math.round(seconds - now);
  const rel = delta === 0 ? "now" : delta > 0 ? `in ${delta} s` : `${-delta} s ago`;
  return `${new Date(seconds * 1000).toISOString()} (${rel} by the server's clock)`;
}

async function inspect(box) {
  await ensureToken();
  const meta = await ensureMeta();
  const jwt = decodeJwt(state.token);
  let now;
  try {
    const clock = await admin("GET", "/admin/clock", undefined, "GET /admin/clock");
    $(".exchanges", box).append(render(clock, "The server's clock, which issued the token and "
      + "which the demo API reads: times below are relative to it."));
    now = clock.json.now;
  } catch (err) {
    now = Date.now() / 1000;
    $(".explain", box).append(el("p", { text: `(times by this browser's clock: ${err.message})` }));
  }
  const jwksRec = await send({ url: local(meta.jwks_uri), label: "GET JWKS" });
  $(".exchanges", box).append(render(jwksRec, "The issuer's public keys, found through "
    + "jwks_uri; a validator caches them."));
  const parts = el("p", { class: "jwt" },
    el("span", { class: "jwt-header", text: jwt.parts[0] }), ".",
    el("span", { class: "jwt-claims", text: jwt.parts[1] }), ".",
    el("span", { class: "jwt-signature", text: jwt.parts[2] }));
  const headerRows = Object.entries(jwt.header).map(([k, v]) => [k, shown(v),
    meaning(state.texts.header, k)]);
  const claimRows = Object.entries(jwt.claims).map(([k, v]) => [k,
    ["iat", "nbf", "exp"].includes(k) && typeof v === "number" ? `${v} = ${when(v, now)}`
      : shown(v), meaning(state.texts.claims, k)]);
  const result = await verifySignature(jwt, jwksRec.json);
  const sig = el("div", { class: "signature", "data-verified": String(result.verified) });
  if (result.jwk) {
    sig.append(el("p", { class: "kid-match", text: `kid ${result.kid} in the header matches `
      + `key ${result.index + 1} of ${jwksRec.json.keys.length} in the JWKS (kty ${result.jwk.kty}`
      + `${result.jwk.crv ? ", crv " + result.jwk.crv : ""}${result.jwk.alg ? ", alg " + result.jwk.alg : ""}).` }));
  }
  sig.append(el("p", { class: "verdict", text: `${result.alg}: ${result.why}` }));
  $(".explain", box).append(el("p", { text: "header . claims . signature (base64url):" }), parts,
    table("Header", headerRows), table("Claims (RFC 9068)", claimRows),
    el("h4", { text: "Signature, checked in this page with WebCrypto" }), sig);
  if (result.verified === false) throw new Error(result.why);
  return `${result.alg} token of ${jwt.claims.sub} for ${jwt.claims.aud}, scope `
    + `${jwt.claims.scope}: ${result.why}`;
}

function tampered(token) {
  const [h, c, s] = token.split(".");
  const i = Math.floor(s.length / 2);
  return `${h}.${c}.${s.slice(0, i)}${s[i] === "A" ? "B" : "A"}${s.slice(i + 1)}`;
}

async function call(box) {
  await ensureToken();
  const meta = await ensureMeta();
  const c = state.client;
  const python = ["import requests",
    "from m2mauth.client import RequestsBearerAuth, TokenProvider", "",
    `provider = TokenProvider(${JSON.stringify(meta.token_endpoint)}, `
      + `client_id=${JSON.stringify(c.clientId)},`,
    `                         client_secret=${JSON.stringify(c.secret)}, `
      + `scope=${JSON.stringify($("#token-scope").value.trim() || "read")},`,
    `                         auth_method=${JSON.stringify($("#token-auth-method").value)})`,
    "session = requests.Session()",
    "session.auth = RequestsBearerAuth(provider)  # the header; one new token on 401 invalid_token",
    `response = session.get(${JSON.stringify(location.origin + state.texts.demo_resource)}, timeout=10)`,
    "print(response.status_code, response.json())"].join("\n");
  const ok = await callApi(state.token, "GET /demo/hello with the token", python);
  const none = await callApi(null, "GET /demo/hello without a token");
  const bad = await callApi(tampered(state.token), "GET /demo/hello with a bad token");
  const cNone = challenge(header(none, "WWW-Authenticate"));
  const cBad = challenge(header(bad, "WWW-Authenticate"));
  $(".exchanges", box).append(
    render(ok, "The API checked signature, iss, aud, times and scope itself: 200."),
    render(none, "No credentials: 401 and a challenge without an error code (RFC 6750 §3.1)."),
    render(bad, "One character of the signature changed: 401 error=\"invalid_token\"."));
  $(".explain", box).append(table("The three answers", [
    ["with the token", String(ok.status), ok.json ? JSON.stringify(ok.json) : ok.text],
    ["without a token", String(none.status), `WWW-Authenticate: ${header(none, "WWW-Authenticate")}`],
    ["with a bad token", String(bad.status), `WWW-Authenticate: ${header(bad, "WWW-Authenticate")}`],
  ]));
  if (ok.status !== 200) throw new Error(`the API answered ${ok.status}: ${header(ok, "WWW-Authenticate")}`);
  return `200 with the token; ${none.status} ${cNone.scheme} without one; ${bad.status} `
    + `${cBad.error || ""} with a bad one`;
}

const STEPS = { discover, client: chooseClient, token: requestToken, inspect, call };

async function runStep(name) {
  const box = stepBox(name);
  clear(box);
  box.dataset.state = "running";
  try {
    $(".outcome", box).textContent = await STEPS[name](box);
    box.dataset.state = "done";
  } catch (err) {
    if (err.record && !(err instanceof AdminTokenNeeded)) $(".exchanges", box).append(render(err.record));
    $(".outcome", box).textContent = `failed: ${err.message}`;
    box.dataset.state = "failed";
  }
}

// -- the lessons ------------------------------------------------------------------------

function lessonBox(lesson) {
  const runButton = el("button", { type: "button", class: "run",
    "aria-label": `Run the lesson: ${lesson.title}`, text: "Run" });
  const box = el("article", { "data-lesson": lesson.name, "aria-labelledby": `lesson-${lesson.name}` },
    el("h3", { id: `lesson-${lesson.name}`, text: lesson.title }),
    el("p", { class: "does", text: lesson.does }), runButton,
    el("p", { class: "outcome", role: "status" }),
    el("div", { class: "story" }),
    el("dl", { class: "teaching" },
      el("dt", { text: "What it shows" }), el("dd", { class: "shows", text: lesson.shows }),
      el("dt", { text: "Why" }), el("dd", { class: "why", text: lesson.why }),
      el("dt", { text: "What a correct client does" }), el("dd", { class: "fix", text: lesson.fix })),
    el("div", { class: "exchanges" }));
  runButton.addEventListener("click", () => runLesson(lesson, box, runButton));
  return box;
}

async function runLesson(lesson, box, button) {
  const run = LESSONS[lesson.name];
  $(".exchanges", box).replaceChildren();
  $(".story", box).replaceChildren();
  box.dataset.outcome = "running";
  button.disabled = true;
  const ctx = {
    texts: state.texts,
    client: null,
    show: (rec, note) => $(".exchanges", box).append(render(rec, note)),
    say: (text) => $(".story", box).append(el("p", { text })),
    code: (text) => $(".story", box).append(el("pre", { class: "code", text })),
  };
  try {
    ctx.client = await ensureClient();
    const { ok, happened } = await run(ctx);
    $(".outcome", box).textContent = `${ok ? "As taught" : "Not as taught"}: ${happened}`;
    box.dataset.outcome = ok ? "as-taught" : "unexpected";
  } catch (err) {
    if (err.record && !(err instanceof AdminTokenNeeded)) ctx.show(err.record);
    $(".outcome", box).textContent = `Could not run: ${err.message}`;
    box.dataset.outcome = "error";
  } finally {
    button.disabled = false;
    button.focus();
  }
}

// -- the page ---------------------------------------------------------------------------

async function reset() {
  const status = $("#reset-status");
  try {
    const rec = await admin("POST", "/admin/reset", undefined, "POST /admin/reset");
    status.textContent = rec.json.reset ? "The issuer is back as it started: clients, keys, "
      + "clock, faults and request logs." : rec.text;
    // A client registered in step 2 is gone: step 2 runs again when it is needed.
    if (state.client && state.client.registered) state.client = null;
    state.token = null;
  } catch (err) {
    status.textContent = `Reset failed: ${err.message}`;
  }
}

async function main() {
  const response = await fetch(BASE + "/playground/lessons.json", { cache: "no-store" });
  state.texts = await response.json();
  for (const step of state.texts.steps) {
    const box = stepBox(step.name);
    const number = state.texts.steps.indexOf(step) + 1;
    $(".step-title", box).textContent = `${number}. ${step.title}`;
    $(".step-text", box).textContent = step.text;
    $(".run", box).addEventListener("click", () => runStep(step.name));
  }
  $("#lessons").replaceChildren(...state.texts.lessons.map(lessonBox));
  $("#reset").addEventListener("click", reset);
  // Enter in the field must not submit (and reload) the page.
  $("#admin-token-box").addEventListener("submit", (event) => event.preventDefault());
  $("#admin-token").addEventListener("input", (event) => {
    session.adminToken = event.target.value.trim() || null;
  });
  $("#where").textContent = `Server: ${location.origin} · demo API ${location.origin}`
    + `${state.texts.demo_resource} (needs scope ${state.texts.demo_scope}; leeway `
    + `${state.texts.demo_leeway} s)`;
  document.body.dataset.ready = "true";
}

main().catch((err) => {
  $("#page-error").textContent = `The playground could not start: ${err.message}`;
});
