// A JWT taken apart, and its signature checked with WebCrypto against the issuer's JWKS –
// in the page, without a library, so each step can be shown.

function b64urlBytes(part) {
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

function b64urlJson(part) {
  return JSON.parse(new TextDecoder().decode(b64urlBytes(part)));
}

export function decodeJwt(token) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error(`a JWS has 3 parts, this has ${parts.length}`);
  return {
    parts,
    header: b64urlJson(parts[0]),
    claims: b64urlJson(parts[1]),
    signingInput: new TextEncoder().encode(parts[0] + "." + parts[1]),
    signature: b64urlBytes(parts[2]),
  };
}

// alg -> [importKey algorithm, verify algorithm, the JWK members that are the public key]
const ALGORITHMS = {
  RS256: [{ name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, { name: "RSASSA-PKCS1-v1_5" },
    ["kty", "n", "e"]],
  PS256: [{ name: "RSA-PSS", hash: "SHA-256" }, { name: "RSA-PSS", saltLength: 32 },
    ["kty", "n", "e"]],
  // JWS ES256 signatures are r||s, the form WebCrypto's ECDSA verifies.
  ES256: [{ name: "ECDSA", namedCurve: "P-256" }, { name: "ECDSA", hash: "SHA-256" },
    ["kty", "crv", "x", "y"]],
  EdDSA: [{ name: "Ed25519" }, { name: "Ed25519" }, ["kty", "crv", "x"]],
};

// {kid, jwk (the JWKS entry with the token's kid, or null), verified: true|false|null, why}
export async function verifySignature(jwt, jwks) {
  const { alg, kid } = jwt.header;
  const keys = (jwks && jwks.keys) || [];
  const jwk = keys.find((k) => k.kid === kid) || null;
  const result = { alg, kid, jwk, index: jwk ? keys.indexOf(jwk) : -1, verified: null, why: "" };
  if (!jwk) {
    result.why = `no key with kid ${JSON.stringify(kid)} in the JWKS (kids there: `
      + `${keys.map((k) => k.kid).join(", ") || "none"})`;
    return result;
  }
  const spec = ALGORITHMS[alg];
  if (!spec) {
    result.why = `alg ${alg} is not one this page verifies`;
    return result;
  }
  if (!globalThis.crypto || !crypto.subtle) {
    result.why = "WebCrypto is not available: the page is not in a secure context "
      + "(open it on http://127.0.0.1 or http://localhost, or over https)";
    return result;
  }
  const material = Object.fromEntries(spec[2].filter((m) => m in jwk).map((m) => [m, jwk[m]]));
  let key;
  try {
    key = await crypto.subtle.importKey("jwk", material, spec[0], false, ["verify"]);
  } catch (err) {
    result.why = alg === "EdDSA"
      ? "this browser's WebCrypto has no Ed25519, so the page cannot check an EdDSA "
        + `signature (${err.name}); a validator on the server side can`
      : `the key could not be imported: ${err.name} ${err.message}`;
    return result;
  }
  result.verified = await crypto.subtle.verify(spec[1], key, jwt.signature, jwt.signingInput);
  result.why = result.verified ? "signature verified"
    : "signature does NOT verify with this key: the token was changed or signed by another key";
  return result;
}
