// The nine lessons: each runs the exchanges lessons.py describes and returns
// {ok: whether the server and the API behaved as taught, happened: what they did}.
// Each leaves the issuer as it found it: the clock back at its offset, faults cleared.

import { admin, header, send } from "./exchange.js";
import { callApi, challenge, DEMO_CLIENT, ensureMeta, local, state, tokenRequest } from "./flow.js";
import { decodeJwt } from "./jwt.js";

const demo = DEMO_CLIENT;

function errorOf(rec) {
  return rec.json && rec.json.error ? rec.json.error : "";
}

function wwwAuth(rec) {
  return header(rec, "WWW-Authenticate") || "";
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Runs `body` and then puts the clock back where it was and drops queued faults.
function restoring(body) {
  return async (ctx) => {
    const found = (await admin("GET", "/admin/clock")).json;
    try {
      return await body(ctx, found);
    } finally {
      const restore = found.offset ? { reset: true, offset: found.offset } : { reset: true };
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

async function token(ctx, form, note, label) {
  const rec = await tokenRequest(demo, form, demo.authMethod, label);
  ctx.show(rec, note);
  return rec;
}

async function wrongSecret(ctx) {
  const rec = await tokenRequest({ ...demo, secret: "wrong-secret" }, { scope: "read" },
    demo.authMethod, "POST token endpoint, wrong secret");
  ctx.show(rec, "The demo client's id with a wrong secret.");
  const ok = rec.status === 401 && errorOf(rec) === "invalid_client" && /^Basic/.test(wwwAuth(rec));
  return { ok, happened: `${rec.status} ${errorOf(rec)}, WWW-Authenticate: ${wwwAuth(rec)}` };
}

async function badScope(ctx) {
  const rec = await token(ctx, { scope: "admin" }, "scope=admin: not registered for the demo "
    + "client.", "POST token endpoint, scope=admin");
  return { ok: rec.status === 400 && errorOf(rec) === "invalid_scope",
    happened: `${rec.status} ${errorOf(rec)}: ${(rec.json && rec.json.error_description) || ""}` };
}

async function badAudience(ctx) {
  const refused = await token(ctx, { scope: "read", resource: "https://other.example" },
    "resource=https://other.example: an API the demo client may not get tokens for.",
    "POST token endpoint, resource=https://other.example");
  const minted = await admin("POST", "/admin/tokens", { client_id: demo.clientId, scope: "read",
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

const skew = restoring(async (ctx, found) => {
  ctx.say("The demo API reads the server's clock, so the page issues each token with the "
    + "server's clock moved, then moves it back and calls the API: what an API whose clock "
    + "differs from the issuer's sees.");
  const cases = [[20, 200], [120, 401], [-20, 200], [-400, 401]];
  const seen = [];
  let ok = true;
  for (const [shift, expected] of cases) {
    const side = shift > 0 ? "ahead of" : "behind";
    await moveClock(ctx, { offset: found.offset + shift }, `The server ${Math.abs(shift)} s `
      + `${side} the API.`);
    const got = await token(ctx, { scope: "read" }, "A token issued by that clock.",
      `POST token endpoint, server ${Math.abs(shift)} s ${side}`);
    await moveClock(ctx, { offset: found.offset }, "Back to the API's time.");
    const call = await callApi(got.json.access_token, `GET /demo/hello, issued ${shift > 0 ? "+" : ""}${shift} s`);
    ctx.show(call, expected === 200 ? "Within the leeway." : "Beyond the leeway.");
    ok = ok && call.status === expected;
    const why = challenge(wwwAuth(call)).error_description;
    seen.push(`${Math.abs(shift)} s ${side}: ${call.status}${why ? ` (${why})` : ""}`);
  }
  return { ok, happened: seen.join("; ") };
});

// The demo API's JWKS cache lives for the JWKS's max-age (at least 60 s); moving the clock
// past it makes the API refetch without waiting out its 30 s unknown-kid cooldown.
function cacheLifetime(jwksRec) {
  const match = /max-age=(\d+)/.exec(header(jwksRec, "Cache-Control") || "");
  return Math.max(60, match ? Number(match[1]) : 300);
}

let lastRotation = -Infinity;
const COOLDOWN = 30;

const rotation = restoring(async (ctx) => {
  const since = (performance.now() - lastRotation) / 1000;
  if (since < COOLDOWN + 1) {
    const wait = Math.ceil(COOLDOWN + 1 - since);
    return { ok: false, happened: `the demo API refetched its JWKS ${Math.floor(since)} s ago `
      + `and refetches for an unknown kid at most every ${COOLDOWN} s: run this again in `
      + `${wait} s` };
  }
  lastRotation = performance.now();
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
  if (state.client.registered) {
    const c = state.client;
    ctx.show(await admin("POST", "/admin/clients", { client_id: c.clientId,
      client_secret: c.secret, scopes: c.scopes, audiences: c.audiences,
      auth_methods: [c.authMethod] }, "POST /admin/clients (step 2's client again)"),
    "The client registered in step 2, registered again.");
  }
  const lifetime = cacheLifetime(jwks);
  await moveClock(ctx, { advance: lifetime + 1 }, `The API still caches the rotated key set; `
    + `${lifetime + 1} s on its cache (max-age ${lifetime} s) has expired …`);
  const back = await token(ctx, { scope: "read" }, "A token signed by the original key.",
    "POST token endpoint, after the reset");
  const callBack = await callApi(back.json.access_token, "GET /demo/hello, original key");
  ctx.show(callBack, "… so the API refetches the JWKS and knows the original key again.");
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
    "POST token endpoint, busy");
  const retryAfter = Number(header(busy, "Retry-After"));
  const waitS = Number.isFinite(retryAfter) ? Math.min(Math.max(retryAfter, 0), 10) : 1;
  ctx.say(`Retry-After: ${header(busy, "Retry-After")} – waiting ${waitS} s before asking `
    + "again, as a correct client does (m2mauth's RetryPolicy does, with jittered back-off "
    + "when there is no Retry-After).");
  await sleep(waitS * 1000);
  const after = await token(ctx, { scope: "read" }, "After the wait.",
    "POST token endpoint, after Retry-After");
  ctx.code(["from m2mauth.client import RetryPolicy, TokenProvider", "",
    `provider = TokenProvider(${JSON.stringify((await ensureMeta()).token_endpoint)}, `
      + `client_id="demo-client", client_secret="demo-secret",`,
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
  return [...after].filter((r) => !before.has(r) && JSON.parse(r).client_id === demo.clientId)
    .length;
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
  for (let i = 1; i <= 5; i++) {
    const got = await token(ctx, { scope: "read" }, `Call ${i}: a new token first.`,
      `POST token endpoint (no cache, call ${i})`);
    ctx.show(await callApi(got.json.access_token, `GET /demo/hello (no cache, call ${i})`));
  }
  const naive = await countNew(ctx, start, "GET /admin/requests/token (after no cache)");
  const middle = await tokenLog(null, "");
  ctx.say("Five calls with a cache that keeps the token until shortly before exp.");
  ctx.code(["from m2mauth.client import TokenProvider", "",
    "provider = TokenProvider(token_url, client_id=\"demo-client\", client_secret=\"demo-secret\",",
    "                         scope=\"read\")",
    "for _ in range(5):",
    "    session.get(api, headers={\"Authorization\": \"Bearer \" + provider.get_token()})"].join("\n"));
  let cached = null;
  let statuses = [];
  for (let i = 1; i <= 5; i++) {
    const now = Date.now() / 1000;
    if (!cached || now > cached.expiresAt - 60) {
      const got = await token(ctx, { scope: "read" }, `Call ${i}: nothing cached, one token.`,
        `POST token endpoint (cache, call ${i})`);
      cached = { token: got.json.access_token, expiresAt: now + got.json.expires_in };
    }
    const call = await callApi(cached.token, `GET /demo/hello (cache, call ${i})`);
    ctx.show(call);
    statuses.push(call.status);
  }
  const good = await countNew(ctx, middle, "GET /admin/requests/token (after the cache)");
  const ok = naive === 5 && good === 1 && statuses.every((s) => s === 200);
  statuses = statuses.join(", ");
  return { ok, happened: `without a cache: ${naive} token requests; with a cache: ${good} `
    + `(the API answered ${statuses})` };
}

async function insufficientScope(ctx) {
  const got = await token(ctx, { scope: "write" }, "A token with scope write only.",
    "POST token endpoint, scope=write");
  const call = await callApi(got.json.access_token, "GET /demo/hello, scope write");
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
