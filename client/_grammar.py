"""Character classes of the RFC grammars the client checks strings against, each written
once: what a scope may be (RFC 6749 §3.3), what a bearer token may be (token68) and what a DPoP
nonce may be."""

from __future__ import annotations

import re
import string

#: RFC 9110 §11.2 token68, which RFC 6750 §2.1 calls b64token: one or more of these, then
#: any number of "=".
TOKEN68_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~+/")
TOKEN68 = re.compile("[" + re.escape("".join(sorted(TOKEN68_CHARACTERS))) + "]+=*")

#: RFC 6749 §3.3 scope-token = 1*( %x21 / %x23-5B / %x5D-7E ): visible ASCII but ``"`` and
#: ``\``, so that a scope fits a quoted-string (RFC 6750 §3 ``scope="..."``) unescaped.
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
#: RFC 9449 §8.1 nonce = 1*NQCHAR, the same characters (RFC 6749 Appendix A: NQCHAR).
NONCE = SCOPE_TOKEN
