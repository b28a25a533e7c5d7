"""HTTP for the walkthrough: a ``requests.Session`` that prints every exchange it makes –
method, URL, request headers and body; status, response headers and body – as curl -v does,
with what must not be shown masked. Because it is a real Session, ``m2mauth.client``'s
``TokenProvider`` can be given it and its exchanges are printed like the walkthrough's own."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import Collection, Iterator
from typing import Any
from urllib.parse import unquote

import requests
import urllib3

from .output import Output

__all__ = ["Wire", "shorten_token"]

#: Bodies longer than this are cut in the output (a JWKS with many keys, a long log).
_MAX_SHOWN_BODY = 3000
#: JSON string values longer than this are shown shortened.
_LONG_VALUE = 100
#: A shortened token keeps this many characters: enough to recognise it, too few to use it.
_TOKEN_PREFIX = 24


def shorten_token(token: str) -> str:
    """A token as the walkthrough shows it: never whole (a bearer token is a credential)."""
    if len(token) <= _TOKEN_PREFIX:
        return token
    return f"{token[:_TOKEN_PREFIX]}... ({len(token)} characters, not shown in full)"


class Wire(requests.Session):
    """Prints each exchange to ``out``: in full (``mode`` "full"), as one line ("brief"), or
    not at all ("quiet": checks that are not part of the lesson). ``public_secrets`` are the
    client secrets that may be shown (the demo client's, the lesson's deliberately wrong one);
    ``admin_token`` is sent to the admin API at ``admin_prefix`` and never shown."""

    def __init__(self, out: Output, *, public_secrets: Collection[str] = (),
                 admin_token: str | None = None, admin_prefix: str = "",
                 timeout: float = 10.0) -> None:
        super().__init__()
        # Only what the exchange needs: requests' defaults (Accept-Encoding, Accept: */*,
        # Connection) would be printed with every request and teach nothing.
        self.headers.clear()
        self.headers["User-Agent"] = "m2mauth-walkthrough"
        self.out = out
        self.mode = "full"
        self.public_secrets = frozenset(public_secrets)
        self.admin_token = admin_token
        self.admin_prefix = admin_prefix
        self.timeout = timeout

    @contextlib.contextmanager
    def printing(self, mode: str) -> Iterator[None]:
        """Exchanges inside the block printed in ``mode``."""
        before, self.mode = self.mode, mode
        try:
            yield
        finally:
            self.mode = before

    def request(self, method: str | bytes, url: str | bytes,  # type: ignore[override]
                *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)  # every read has a deadline
        # A redirect is shown as the answer it is: none of these endpoints may send one.
        kwargs.setdefault("allow_redirects", False)
        if self.admin_token and self.admin_prefix and str(url).startswith(self.admin_prefix):
            headers = dict(kwargs.get("headers") or {})
            headers.setdefault("Authorization", f"Bearer {self.admin_token}")
            kwargs["headers"] = headers
        return super().request(method, url, *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        response = super().send(request, **kwargs)
        content = response.content  # read now (also a streamed one), so it can be printed
        if self.mode == "full":
            self._print_full(request, response, content.decode("utf-8", "replace"))
        elif self.mode == "brief":
            self.out.detail(f"  {request.method} {request.url} -> {_status_line(response)}")
        if kwargs.get("stream"):
            _rewind(response, content)
        return response

    # -- printing -------------------------------------------------------------------------

    def _print_full(self, request: requests.PreparedRequest, response: requests.Response,
                    text: str) -> None:
        out = self.out
        out.line()
        out.request(f"> {request.method} {request.url}")
        for name, value in request.headers.items():
            for line in self._request_header(name, value):
                out.request(f"> {line}")
        body = request.body
        if body:
            sent = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
            form = request.headers.get("Content-Type", "").startswith(
                "application/x-www-form-urlencoded")
            out.request(f">\n> {self._mask_form(sent)}" if form
                        else ">\n" + _indent(self._mask_json_text(sent), "> "))
        out.response(f"< {_status_line(response)}", response.status_code)
        for name, value in response.headers.items():
            out.response(f"< {name}: {value}", response.status_code)
        if text:
            out.response("<", response.status_code)
            out.line(_indent(self._mask_json_text(text), "< "))

    def _request_header(self, name: str, value: str) -> list[str]:
        if name.lower() != "authorization":
            return [f"{name}: {value}"]
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() == "bearer":
            if self.admin_token and credentials == self.admin_token:
                return [f"{name}: Bearer (the admin token, not shown)"]
            return [f"{name}: Bearer {shorten_token(credentials)}"]
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except ValueError:
                return [f"{name}: {value}"]
            client_id, _, secret = decoded.partition(":")
            if unquote(secret) in self.public_secrets:
                return [f"{name}: {value}",
                        f"  (base64 of \"{decoded}\": client id, a colon, the secret)"]
            return [f"{name}: Basic (base64 of \"{client_id}:<secret, not shown>\")"]
        return [f"{name}: {scheme} (not shown)"]

    def _mask_form(self, text: str) -> str:
        parts = []
        for pair in text.split("&"):
            key, sep, value = pair.partition("=")
            if key in ("client_secret", "client_assertion") and \
                    unquote(value) not in self.public_secrets:
                value = "<not shown>"
            parts.append(f"{key}{sep}{value}")
        return "&".join(parts)

    def _mask_json_text(self, text: str) -> str:
        try:
            document = json.loads(text)
        except ValueError:
            return _cut(text)
        return _cut(json.dumps(self._mask(document), indent=2))

    def _mask(self, value: Any) -> Any:
        if isinstance(value, dict):
            masked = {}
            for key, item in value.items():
                if key == "client_secret" and isinstance(item, str) and \
                        item not in self.public_secrets:
                    masked[key] = "<not shown>"
                elif key == "access_token" and isinstance(item, str):
                    masked[key] = shorten_token(item)
                elif isinstance(item, str) and len(item) > _LONG_VALUE and " " not in item:
                    # An RSA modulus and the like: its start identifies it, the rest is noise
                    # (sentences, such as error descriptions, are shown whole).
                    masked[key] = f"{item[:_LONG_VALUE // 2]}... ({len(item)} characters)"
                else:
                    masked[key] = self._mask(item)
            return masked
        if isinstance(value, list):
            return [self._mask(item) for item in value]
        return value


def _rewind(response: requests.Response, content: bytes) -> None:
    """Give a streamed response, whose body was read to be printed, a fresh urllib3 body over
    the same bytes: the caller (``m2mauth.client`` reads token responses streamed, within a
    size cap) still reads it as it would from the network."""
    headers = {k: v for k, v in response.headers.items()
               if k.lower() not in ("content-encoding", "transfer-encoding")}
    response.raw = urllib3.HTTPResponse(body=io.BytesIO(content), headers=headers,
                                        status=response.status_code, preload_content=False,
                                        decode_content=False)
    response._content = False  # type: ignore[assignment]  # requests: "not read yet"
    response._content_consumed = False


def _status_line(response: requests.Response) -> str:
    return f"{response.status_code} {response.reason or ''}".rstrip()


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _cut(text: str) -> str:
    if len(text) <= _MAX_SHOWN_BODY:
        return text
    return text[:_MAX_SHOWN_BODY] + f"\n... ({len(text) - _MAX_SHOWN_BODY} more characters)"
