// The nine lessons: each runs the exchanges lessons.py describes and returns
// {ok: whether the server and the API behaved as taught, happened: what they did}.
// Each leaves the issuer as it found it: the clock back at its offset (and frozen if it was),
// faults cleared. Each runs with the client of step 2, ctx.client.

import { admin, header, send } from "./exchange.js";
import { callApi, challenge, ensureMeta, local, tokenRequest } from "./flow.js";
import { decodeJwt } from "./jwt.js";

function errorOf(rec) {
  return rec.json && rec.json.error ? rec.json.error : "";
}

function wwwAuth(rec) {
  return header(rec, "WWW-Authenticate") || "";
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Runs `body` and then puts the clock back where it was – a frozen clock frozen at the same
// instant – and drops queued faults.
function restoring(body) {
  return async (ctx) => {
    const found = (await admin("GET", "/admin/clock")).json;
    try {
      return await body(ctx, found);
    } finally {
      const restore = { reset: true };
      if (found.offset) restore.offset = found.offset;
      if (found.frozen) restore.at = found.now;
      ctx.show(await admin("POST", "/admin/clock", restore, "POST /admin/clock (put back)"),
        "The clock back where the lesson found it.");
      ctx.show(await admin("DELETE", "/admin/faults", undefined, "DELETE /admin/faults"),
        "No fault left queued.");
    }
  };
}

async function moveClock(ctx, body, note) {
  const rec = await admin("POST", "/admin/clock", body, `POST /admin/clock ${JSON.stringify(body)}`);
  ctx.show(rec, note);
  return rec.json;
}

// A token request with the lesson's client; the lessons that go on with the token need a
// 200 and say why they cannot go on without one.
async function token(ctx, form, note, label, { mayFail = false } = {}) {
  const client = ctx.client;
  const rec = await tokenRequest(client, form, client.authMethod, label);
  ctx.show(rec, note);
  if (!mayFail && (rec.status !== 200 || !rec.json || !rec.json.access_token)) {
    const why = rec.json && rec.json.error
      ? `${rec.json.error}${rec.json.error_description ? ": " + rec.json.error_description : ""}`
      : rec.error || rec.text || "";
    throw new Error(`the lesson needs a token for client ${client.clientId}`
      + `${form.scope ? " with scope " + form.scope : ""}, and the token endpoint answered `
      + `${rec.status} ${why} – choose or register a client in step 2 that may get one`);
  }
  return rec;
}

async function wrongSecret(ctx) {
  const client = ctx.client;
  const rec = await tokenRequest({ ...client, secret: "wrong-secret" }, { scope: "read" },
    client.authMethod, "POST token endpoint, wrong secret");
  ctx.show(rec, `The client ${client.clientId} with a wrong secret.`);
  // RFC 6749 §5.2: 401 with a Basic challenge when the client used the Authorization
  // header; a secret in the body gets 400.
  const basic = client.authMethod !== "client_secret_post";
  const ok = errorOf(rec) === "invalid_client" && (basic
    ? rec.status === 401 && /^Basic/.test(wwwAuth(rec)) : rec.status === 400);
  return { ok, happened: `${rec.status} ${errorOf(rec)}, WWW-Authenticate: `
    + `${wwwAuth(rec) || "(none)"}` };
}

async function badScope(ctx) {
  const have = ctx.client.scopes || [];
  let scope = "admin";
  while (have.includes(scope)) scope += "-x";
  const rec = await token(ctx, { scope }, `scope=${scope}: not registered for the client `
    + `${ctx.client.clientId}.`, `POST token endpoint, scope=${scope}`, { mayFail: true });
  return { ok: rec.status === 400 && errorOf(rec) === "invalid_scope",
    happened: `${rec.status} ${errorOf(rec)}: ${(rec.json && rec.json.error_description) || ""}` };
}

async function badAudience(ctx) {
  const refused = await token(ctx, { scope: "read", resource: "https://other.example" },
    "resource=https://other.example: an API this client may not get tokens for.",
    "POST token endpoint, resource=https://other.example", { mayFail: true });
  const minted = await admin("POST", "/admin/tokens", { client_id: ctx.client.clientId, scope: "read",
    audience: "https://other.example" }, "POST /admin/tokens (aud https://other.example)");
  ctx.show(minted, "The server will not issue it, so the lab mints what such a token would "
    + "look like: signed by the right key, meant for another API.");
  const call = await callApi(minted.json.access_token, "GET /demo/hello, token for another API");
  ctx.show(call, "The demo API is api://default: it refuses a token for any other audience.");
  const ok = refused.status === 400 && errorOf(refused) === "invalid_target"
    && call.status === 401 && challenge(wwwAuth(call)).error === "invalid_token";
  return { ok, happened: `token endpoint ${refused.status} ${errorOf(refused)}; the API `
    + `${call.status} ${challenge(wwwAuth(call)).error || ""} `
    + `(${challenge(wwwAuth(call)).error_description || ""})` };
}

const expired = restoring(async (ctx) => {
  const got = await token(ctx, { scope: "read" }, "A fresh token.", "POST token endpoint");
  const jwt = decodeJwt(got.json.access_token);
  const first = await callApi(got.json.access_token, "GET /demo/hello, fresh token");
  ctx.show(first, "Accepted while it is valid.");
  const now = (await admin("GET", "/admin/clock")).json.now;
  const leeway = ctx.texts.demo_leeway;
  const advance = Math.ceil(jwt.claims.exp - now) + leeway + 1;
  await moveClock(ctx, { advance }, `${advance} s on: past exp and the API's ${leeway} s leeway.`);
  const late = await callApi(got.json.access_token, "GET /demo/hello, same token, later");
  ctx.show(late, "The same token, now expired.");
  const again = await token(ctx, { scope: "read" }, "What a correct client does: a new token.",
    "POST token endpoint, a new token");
  const retry = await callApi(again.json.access_token, "GET /demo/hello, new token");
  ctx.show(retry, "…and the call succeeds again.");
  const ok = first.status === 200 && late.status === 401 && /expired/.test(wwwAuth(late))
    && retry.status === 200;
  return { ok, happened: `${first.status} at first; ${advance} s later ${late.status} `
    + `(${wwwAuth(late)}); with a new token ${retry.status}` };
});

const skew = restoring(async (ctx) => {
  ctx.say("The demo API reads the server's clock, so the page issues each token with the "
    + "server's clock moved, then moves it back and calls the API: what an API whose clock "
    + "differs from the issuer's sees.");
  // The far case: behind by more than the token's lifetime (its expires_in, read from the
  // first token) plus the leeway, so that the token arrives already expired.
  const beyond = ctx.texts.skew_beyond_lifetime;
  const cases = [[20, 200], [120, 401], [-20, 200], [null, 401]];
  const seen = [];
  let ok = true;
  let lifetime = null;
  for (const [near, expected] of cases) {
    const shift = near !== null ? near : -(lifetime + ctx.texts.demo_leeway + beyond);
    const side = shift > 0 ? "ahead of" : "behind";
    // Moved by advance and back by the same amount: that also keeps a frozen clock's instant.
    await moveClock(ctx, { advance: shift }, `The server ${Math.abs(shift)} s ${side} the API`
      + (near === null ? ` (the token's lifetime ${lifetime} s, the leeway `
        + `${ctx.texts.demo_leeway} s and ${beyond} s more).` : "."));
    const got = await token(ctx, { scope: "read" }, "A token issued by that clock.",
      `POST token endpoint, server ${Math.abs(shift)} s ${side}`);
    if (lifetime === null) lifetime = Number(got.json.expires_in);
    await moveClock(ctx, { advance: -shift }, "Back to the API's time.");
    const call = await callApi(got.json.access_token, `GET /demo/hello, issued ${shift > 0 ? "+" : ""}${shift} s`);
    ctx.show(call, expected === 200 ? "Within the leeway." : "Beyond the leeway.");
    ok = ok && call.status === expected;
    const why = challenge(wwwAuth(call)).error_description;
    seen.push(`${Math.abs(shift)} s ${side}: ${call.status}${why ? ` (${why})` : ""}`);
  }
  return { ok, happened: seen.join("; ") };
});

const rotation = restoring(async (ctx) => {
  const meta = await ensureMeta();
  const old = await token(ctx, { scope: "read" }, "A token signed by the current key.",
    "POST token endpoint, before the rotation");
  const oldKid = decodeJwt(old.json.access_token).header.kid;
  const rotated = await admin("POST", "/admin/keys/rotate", {}, "POST /admin/keys/rotate");
  ctx.show(rotated, `A new active key ${rotated.json.kid}; the old one ${oldKid} stays `
    + "published, so tokens it signed keep working while they live.");
  const retired = await admin("POST", `/admin/keys/${encodeURIComponent(oldKid)}/retire`,
    undefined, `POST /admin/keys/${oldKid}/retire`);
  ctx.show(retired, `The old key ${oldKid} out of the JWKS (what a server does once its `
    + "tokens have expired – here at once, to show the refusal).");
  const jwks = await send({ url: local(meta.jwks_uri), label: "GET JWKS after the rotation" });
  ctx.show(jwks, "Only the new key is published now.");
  const fresh = await token(ctx, { scope: "read" }, "A new token: the new kid.",
    "POST token endpoint, after the rotation");
  const newKid = decodeJwt(fresh.json.access_token).header.kid;
  const callNew = await callApi(fresh.json.access_token, "GET /demo/hello, new token");
  ctx.show(callNew, `kid ${newKid} is unknown to the API's cached JWKS: it refetches, `
    + "finds the key and accepts the token.");
  const callOld = await callApi(old.json.access_token, "GET /demo/hello, old token");
  ctx.show(callOld, `kid ${oldKid} is in no JWKS any more: refused.`);
  // Put the keys back: the lab's reset (which also drops clients added since the start, so
  // a client registered in step 2 is registered again).
  ctx.show(await admin("POST", "/admin/reset", undefined, "POST /admin/reset"),
    "Putting the issuer back: the lab's reset restores the original key.");
  if (ctx.client.registered) {
    const c = ctx.client;
    ctx.show(await admin("POST", "/admin/clients", { client_id: c.clientId,
      client_secret: c.secret, scopes: c.scopes, audiences: c.audiences,
      auth_methods: [c.authMethod] }, "POST /admin/clients (step 2's client again)"),
    "The client registered in step 2, registered again.");
  }
  const back = await token(ctx, { scope: "read" }, "A token signed by the original key.",
    "POST token endpoint, after the reset");
  const callBack = await callApi(back.json.access_token, "GET /demo/hello, original key");
  ctx.show(callBack, "The original kid is unknown to the API's cached (rotated) key set: it "
    + "refetches the JWKS and knows the original key again.");
  const ok = newKid !== oldKid && callNew.status === 200 && callOld.status === 401
    && challenge(wwwAuth(callOld)).error === "invalid_token" && callBack.status === 200;
  return { ok, happened: `new kid ${newKid}: ${callNew.status}; old kid ${oldKid}: `
    + `${callOld.status} ${challenge(wwwAuth(callOld)).error || ""} `
    + `(${challenge(wwwAuth(callOld)).error_description || ""})` };
});

const rateLimit = restoring(async (ctx) => {
  ctx.show(await admin("POST", "/admin/faults", { endpoint: "token", status: 429, retry_after: 1 },
    "POST /admin/faults (429, Retry-After: 1)"), "The next token request will be refused.");
  const busy = await token(ctx, { scope: "read" }, "The server is busy.",
    "POST token endpoint, busy", { mayFail: true });
  const retryAfter = Number(header(busy, "Retry-After"));
  const waitS = Number.isFinite(retryAfter) ? Math.min(Math.max(retryAfter, 0), 10) : 1;
  ctx.say(`Retry-After: ${header(busy, "Retry-After")} – waiting ${waitS} s before asking `
    + "again, as a correct client does (m2mauth's RetryPolicy does, with jittered back-off "
    + "when there is no Retry-After).");
  await sleep(waitS * 1000);
  const after = await token(ctx, { scope: "read" }, "After the wait.",
    "POST token endpoint, after Retry-After", { mayFail: true });
  ctx.code(["from m2mauth.client import RetryPolicy, TokenProvider", "",
    `provider = TokenProvider(${JSON.stringify((await ensureMeta()).token_endpoint)}, `
      + `client_id=${JSON.stringify(ctx.client.clientId)},`,
    `                         client_secret=${JSON.stringify(ctx.client.secret)}, `
      + `auth_method=${JSON.stringify(ctx.client.authMethod)},`,
    "                         scope=\"read\", retry=RetryPolicy(max_attempts=4))",
    "provider.get_token()  # waits Retry-After on 429, then asks again"].join("\n"));
  const ok = busy.status === 429 && header(busy, "Retry-After") !== null
    && errorOf(busy) === "temporarily_unavailable" && after.status === 200;
  return { ok, happened: `${busy.status} ${errorOf(busy)} with Retry-After: `
    + `${header(busy, "Retry-After")}; after ${waitS} s: ${after.status}` };
});

// The log's entries (JSON text each): what is new since `before` is what the run caused –
// not times, which other lessons' clock moves make overlap.
async function tokenLog(ctx, label) {
  const rec = await admin("GET", "/admin/requests/token", undefined, label);
  if (ctx) ctx.show(rec, "The server's log of token requests.");
  return new Set(rec.json.requests.map((r) => JSON.stringify(r)));
}

async function countNew(ctx, before, label) {
  const after = await tokenLog(ctx, label);
  return [...after].filter((r) => !before.has(r)
    && JSON.parse(r).client_id === ctx.client.clientId).length;
}

async function caching(ctx) {
  const start = await tokenLog(null, "");
  ctx.say("Five calls with the tutorial's client: its cache never hits (it read "
    + "token_data, never defined), so every call gets a new token.");
  ctx.code(["class TutorialTokenProvider:  # the bug: the cache check reads token_data",
    "    def get_token(self):",
    "        if self.token and time.time() < token_data[\"expires_at\"]:  # NameError, caught",
    "            return self.token",
    "        return self.fetch_new_token()  # so: a token request per call"].join("\n"));
  const naiveStatuses = [];
  for (let i = 1; i <= 5; i++) {
    const got = await token(ctx, { scope: "read" }, `Call ${i}: a new token first.`,
      `POST token endpoint (no cache, call ${i})`);
    const call = await callApi(got.json.access_token, `GET /demo/hello (no cache, call ${i})`);
    ctx.show(call);
    naiveStatuses.push(call.status);
  }
  const naive = await countNew(ctx, start, "GET /admin/requests/token (after no cache)");
  const middle = await tokenLog(null, "");
  ctx.say("Five calls with a cache that keeps the token until shortly before exp.");
  ctx.code(["from m2mauth.client import TokenProvider", "",
    `provider = TokenProvider(token_url, client_id=${JSON.stringify(ctx.client.clientId)}, `
      + `client_secret=${JSON.stringify(ctx.client.secret)},`,
    `                         auth_method=${JSON.stringify(ctx.client.authMethod)}, `
      + "scope=\"read\")",
    "for _ in range(5):",
    "    session.get(api, headers={\"Authorization\": \"Bearer \" + provider.get_token()})"].join("\n"));
  let cached = null;
  const statuses = [];
  for (let i = 1; i <= 5; i++) {
    const now = Date.now() / 1000;
    if (!cached || now > cached.refreshAt) {
      const got = await token(ctx, { scope: "read" }, `Call ${i}: nothing cached, one token.`,
        `POST token endpoint (cache, call ${i})`);
      // Refresh when less than a minute – or half the lifetime, for short-lived tokens –
      // is left.
      const lifetime = Number(got.json.expires_in);
      const margin = Math.min(60, lifetime / 2);
      cached = { token: got.json.access_token, refreshAt: now + lifetime - margin };
    }
    const call = await callApi(cached.token, `GET /demo/hello (cache, call ${i})`);
    ctx.show(call);
    statuses.push(call.status);
  }
  const good = await countNew(ctx, middle, "GET /admin/requests/token (after the cache)");
  const ok = naive === 5 && good === 1 && naiveStatuses.every((s) => s === 200)
    && statuses.every((s) => s === 200);
  return { ok, happened: `without a cache: ${naive} token requests; with a cache: ${good} `
    + `(the API answered ${naiveStatuses.join(", ")} without and ${statuses.join(", ")} `
    + "with it)" };
}

async function insufficientScope(ctx) {
  const needed = ctx.texts.demo_scope;
  const other = (ctx.client.scopes || []).find((s) => s !== needed);
  if (!other) {
    throw new Error(`the lesson needs a client with a scope besides ${needed}, and `
      + `${ctx.client.clientId} has only ${(ctx.client.scopes || []).join(" ") || "none"}: `
      + "register one in step 2 with scopes read write");
  }
  const got = await token(ctx, { scope: other }, `A token with scope ${other} only.`,
    `POST token endpoint, scope=${other}`);
  const call = await callApi(got.json.access_token, `GET /demo/hello, scope ${other}`);
  ctx.show(call, `/demo/hello needs scope ${ctx.texts.demo_scope}.`);
  const c = challenge(wwwAuth(call));
  const ok = got.status === 200 && call.status === 403 && c.error === "insufficient_scope"
    && c.scope === ctx.texts.demo_scope;
  return { ok, happened: `${call.status} ${c.error || ""}, WWW-Authenticate: ${wwwAuth(call)}` };
}

export const LESSONS = {
  "wrong-secret": wrongSecret,
  "bad-scope": badScope,
  "bad-audience": badAudience,
  expired,
  skew,
  rotation,
  "rate-limit": rateLimit,
  caching,
  "insufficient-scope": insufficientScope,
};
