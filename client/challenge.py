"""``WWW-Authenticate`` challenges (RFC 9110 §11.6.1, RFC 6750 §3) and the one decision the
bearer adapters need from them: is a 401 worth a fresh token and one retry?

Hand-written on purpose: neither ``requests`` nor ``httpx`` parses challenges (requests'
``parse_dict_header`` splits on commas without knowing challenge boundaries, httpx has none),
and no maintained, dependency-free library does just this. The grammar is small:

    WWW-Authenticate = #challenge
    challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    auth-param  = token BWS "=" BWS ( token / quoted-string )
    token68     = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="

The parser is strict about that structure and never raises: it returns the challenges that
parsed completely before the first malformed one (after a malformed part the boundary of the
next challenge cannot be known, so it stops there).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from ._grammar import TOKEN68_CHARACTERS

__all__ = ["Challenge", "dpop_nonce_requested", "parse_challenges", "should_refetch"]

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789"
                   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WS = " \t"


class _Params(Mapping[str, str]):
    """Auth-params: read-only, names case-insensitive (stored lower-case)."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._data = {str(k).lower(): v for k, v in pairs}

    def __getitem__(self, name: str) -> str:
        return self._data[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


@dataclass(frozen=True)
class Challenge:
    """One challenge: ``scheme`` (lower-cased: schemes are case-insensitive), ``params`` (a
    read-only mapping whose names are case-insensitive) and, for schemes that use one instead of
    params, ``token68`` (kept out of ``repr``)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=_Params)
    token68: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", self.scheme.lower())
        if not isinstance(self.params, _Params):
            object.__setattr__(self, "params", _Params(self.params))

    def __hash__(self) -> int:
        return hash((self.scheme, self.params, self.token68))


class _Malformed(Exception):
    pass


class _Scanner:
    """A cursor over one header value; every method either advances or raises _Malformed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> int:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _WS:
            self.pos += 1
        return self.pos - start

    def skip_list_separators(self) -> bool:
        """OWS and commas (empty list elements are allowed); True if a comma was seen."""
        comma = False
        while self.pos < len(self.text) and self.text[self.pos] in _WS + ",":
            comma = comma or self.text[self.pos] == ","
            self.pos += 1
        return comma

    def token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _TCHAR:
            self.pos += 1
        if self.pos == start:
            raise _Malformed
        return self.text[start:self.pos]

    def quoted_string(self) -> str:
        if self.peek() != '"':
            raise _Malformed
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\":
                # quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
                if self.pos + 1 >= len(self.text) or not _is_qpair_char(self.text[self.pos + 1]):
                    raise _Malformed
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if not _is_qdtext(c):
                raise _Malformed
            out.append(c)
            self.pos += 1
        raise _Malformed  # unterminated

    def looks_like_param(self) -> bool:
        """Whether an auth-param (``token BWS "="`` then a value) starts here, without moving:
        how a comma-separated param is told apart from the next challenge's scheme."""
        saved = self.pos
        try:
            self.token()
            self.skip_ws()
            if self.peek() != "=":
                return False
            self.pos += 1
            self.skip_ws()
            return self.peek() == '"' or self.peek() in _TCHAR
        except _Malformed:
            return False
        finally:
            self.pos = saved

    def token68(self) -> str | None:
        """A token68 that is the whole rest of this challenge (followed by OWS and then a
        comma or the end), else None without moving."""
        saved = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in TOKEN68_CHARACTERS:
            self.pos += 1
        if self.pos == saved:
            return None
        while self.peek() == "=":
            self.pos += 1
        value = self.text[saved:self.pos]
        self.skip_ws()
        if self.at_end() or self.peek() == ",":
            return value
        self.pos = saved
        return None


def _is_qdtext(c: str) -> bool:
    o = ord(c)
    return c in "\t " or o == 0x21 or 0x23 <= o <= 0x5B or 0x5D <= o <= 0x7E or o >= 0x80


def _is_qpair_char(c: str) -> bool:
    o = ord(c)
    return c in "\t " or 0x21 <= o <= 0x7E or o >= 0x80


def _param(s: _Scanner) -> tuple[str, str]:
    name = s.token()
    s.skip_ws()
    if s.peek() != "=":
        raise _Malformed
    s.pos += 1
    s.skip_ws()
    value = s.quoted_string() if s.peek() == '"' else s.token()
    return name.lower(), value


def _challenge(s: _Scanner) -> Challenge:
    """One challenge starting at its scheme; leaves the cursor at a comma or the end."""
    scheme = s.token()
    if s.at_end() or s.peek() == ",":
        return Challenge(scheme)
    if not s.skip_ws():
        raise _Malformed  # the scheme must be followed by 1*SP (or nothing)
    if s.at_end() or s.peek() == ",":
        return Challenge(scheme)
    if not s.looks_like_param():
        value = s.token68()
        if value is None:
            raise _Malformed
        return Challenge(scheme, token68=value)
    params: dict[str, str] = {}
    while True:
        name, value = _param(s)
        if name in params:
            raise _Malformed  # RFC 9110: a parameter name occurs at most once per challenge
        params[name] = value
        s.skip_ws()
        if s.at_end():
            break
        if s.peek() != ",":
            raise _Malformed
        # A comma ends this param; what follows is another param of this challenge or the
        # next challenge. Empty list elements (", ,") are allowed.
        saved = s.pos
        s.skip_list_separators()
        if s.at_end() or not s.looks_like_param():
            s.pos = saved
            break
    return Challenge(scheme, params)


def parse_challenges(header: str | None) -> list[Challenge]:
    """The challenges of one ``WWW-Authenticate`` value (a list: one value may hold several).
    Never raises; stops at the first malformed challenge and returns those before it."""
    if not isinstance(header, str):
        return []
    s = _Scanner(header)
    found: list[Challenge] = []
    try:
        while True:
            s.skip_list_separators()
            if s.at_end():
                break
            found.append(_challenge(s))
            s.skip_ws()
            if not s.at_end() and s.peek() != ",":
                raise _Malformed
    except _Malformed:
        pass
    return found


def _challenges(www_authenticate_values: str | Iterable[str] | None) -> list[Challenge]:
    if www_authenticate_values is None:
        values: list[str] = []
    elif isinstance(www_authenticate_values, str):
        values = [www_authenticate_values]
    else:
        values = [v for v in www_authenticate_values if isinstance(v, str)]
    return [c for v in values for c in parse_challenges(v)]


def should_refetch(response_status: int,
                   www_authenticate_values: str | Iterable[str] | None,
                   *, scheme: str = "bearer") -> bool:
    """Whether a response means "this bearer token is no good, get another and retry once".

    Only a 401 qualifies – never a 403 or anything else. Then:

    * a Bearer challenge with ``error="invalid_token"`` or with no ``error``: True;
    * a Bearer challenge with any other error (``invalid_request``, ``insufficient_scope``
      ...): False – a new token cannot fix the request;
    * no ``WWW-Authenticate`` at all, or nothing in it that parses: True (RFC 6750 requires
      the header, so its absence says nothing about the token; one retry is bounded);
    * only non-Bearer challenges (``Basic`` ...): False – the server does not take tokens.

    ``www_authenticate_values`` is one header value or all of them (httpx's ``get_list``;
    requests joins repeated headers with ", ", which parses the same). ``scheme="dpop"``
    asks the same of a DPoP-bound token and the server's DPoP challenges (RFC 9449 §7.1).
    """
    if response_status != 401:
        return False
    challenges = _challenges(www_authenticate_values)
    if not challenges:
        return True
    ours = [c for c in challenges if c.scheme == scheme.lower()]
    if not ours:
        return False
    errors = {c.params.get("error") for c in ours}
    return errors <= {None, "invalid_token"}


def dpop_nonce_requested(response_status: int,
                         www_authenticate_values: str | Iterable[str] | None) -> bool:
    """Whether a resource server's response asks for a DPoP nonce: a 401 with a DPoP
    challenge whose error is ``use_dpop_nonce`` (RFC 9449 §9; the nonce itself comes in the
    ``DPoP-Nonce`` header)."""
    return response_status == 401 and any(
        c.scheme == "dpop" and c.params.get("error") == "use_dpop_nonce"
        for c in _challenges(www_authenticate_values))
