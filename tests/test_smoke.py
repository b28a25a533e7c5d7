import jwt
import requests


def test_demo_client_gets_a_verifiable_token(live_server):
    r = requests.post(live_server.issuer + "/token", data={"grant_type": "client_credentials"},
                      auth=("demo-client", "demo-secret"), timeout=5)
    assert r.status_code == 200
    body = r.json()
    jwks = jwt.PyJWKClient(live_server.issuer + "/jwks.json")
    key = jwks.get_signing_key_from_jwt(body["access_token"])
    claims = jwt.decode(body["access_token"], key, algorithms=["RS256"], audience="api://default",
                        issuer=live_server.issuer)
    assert claims["sub"] == "demo-client"
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
