"""The HTTP client of a running VX11 gateway, as the ``vx11`` command uses it: one
session, one error type, and the parsing of a spawn's Server-Sent Events."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

DEFAULT_URL = "http://127.0.0.1:8000"
"""Where ``./scripts/run`` serves the gateway."""
TOKEN_HEADER = "X-VX11-Token"
LAST_EVENT_ID = "Last-Event-ID"
"""The header that resumes an event stream after the event it names (SSE's own)."""
CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection to the gateway."""
READ_TIMEOUT = 30.0
"""Seconds to wait for an answer (a ``?wait=`` read adds its own wait to this)."""
EVENTS_READ_TIMEOUT = 60.0
"""Seconds of silence after which an event stream counts as lost: the gateway sends a
keepalive comment every 15 s on a quiet stream."""

UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
BAD_URL = "bad_url"
BAD_RESPONSE = "bad_response"

BAD_URL_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
)


class ApiError(Exception):
    """Raised when the gateway answers with an error, or cannot be reached or understood.

    ``status`` is the HTTP status, or None when there was no answer (``code`` is then
    ``unreachable``, ``timeout`` or ``bad_url``). ``body`` is the error's JSON (``fields``,
    ``required``, ``targets``...); ``retry_after`` is the Retry-After header in seconds."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        *,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.body = body or {}
        self.retry_after = retry_after

    @property
    def transport(self) -> bool:
        """True when no HTTP answer came: the gateway is down, slow or the URL is wrong."""
        return self.status is None


@dataclass(frozen=True)
class ServerEvent:
    """One Server-Sent Event: its ``event`` name, its ``data`` parsed as JSON, its ``id``."""

    kind: str
    data: Any
    id: str | None = None


def event_order(event_id: str | None) -> tuple[int, int] | None:
    """An event's id (the gateway's ``<milliseconds>-<sequence>``, a Redis stream entry's)
    as the pair it is ordered by; None for no id, or one of another shape."""
    ms, dash, seq = (event_id or "").partition("-")
    if not (dash and ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    return int(ms), int(seq)


@dataclass
class _PendingEvent:
    kind: str = "message"
    data: list[str] = field(default_factory=list)
    id: str | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """The events of a ``text/event-stream`` given line by line (without line ends).

    Follows the WHATWG rules the gateway needs: ``event``, ``data`` (several lines are
    joined with newlines), ``id``, comments (``:``) ignored, a blank line dispatches."""
    pending = _PendingEvent()
    for line in lines:
        if not line:
            if pending.data:
                raw = "\n".join(pending.data)
                try:
                    data = json.loads(raw)
                except ValueError:
                    raise ApiError(
                        200, BAD_RESPONSE, f"an event's data is not JSON: {raw[:80]!r}"
                    ) from None
                yield ServerEvent(pending.kind, data, pending.id)
            pending = _PendingEvent()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            pending.kind = value
        elif name == "data":
            pending.data.append(value)
        elif name == "id":
            pending.id = value


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _reason(exc: Exception) -> str:
    """The useful end of a requests exception ("Connection refused"), not its repr chain."""
    found = _ERRNO.findall(str(exc))
    if found:
        return found[-1].strip().rstrip(".")
    if "RemoteDisconnected" in str(exc) or "ProtocolError" in str(exc):
        return "the connection closed without an answer"
    return type(exc).__name__


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


class Client:
    """Calls the gateway at ``base_url`` with ``token``, over one kept-alive session.

    Every method returns the API's JSON or raises :class:`ApiError`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "vx11-cli"
        if token:
            self.session.headers[TOKEN_HEADER] = token

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- transport ----------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        read_timeout: float | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> requests.Response:
        url = f"{self.base_url}{path}"
        read = self.timeout if read_timeout is None else read_timeout
        try:
            response = self.session.request(
                method, url, timeout=(CONNECT_TIMEOUT, read), stream=stream, **kwargs
            )
        except BAD_URL_ERRORS as exc:
            raise ApiError(
                None, BAD_URL, f"not a usable gateway URL: {self.base_url!r} ({exc})"
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise ApiError(
                None,
                TIMEOUT,
                f"cannot connect to the gateway at {self.base_url} within {CONNECT_TIMEOUT:g} s",
            ) from None
        except requests.exceptions.Timeout:
            raise ApiError(
                None, TIMEOUT, f"the gateway at {self.base_url} did not answer within {read:g} s"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise ApiError(
                None, UNREACHABLE, f"cannot reach the gateway at {self.base_url}: {_reason(exc)}"
            ) from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _error(self, response: requests.Response) -> ApiError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "error" not in body:
            text = " ".join(response.text.split())[:120] or response.reason or "no body"
            return ApiError(
                status,
                f"http_{status}",
                f"{response.url} answered {status} without a VX11 error (is it the gateway?): "
                f"{text}",
                retry_after=_retry_after(response),
            )
        message = str(body.get("message") or body["error"])
        return ApiError(
            status, str(body["error"]), message, body=body, retry_after=_retry_after(response)
        )

    def request(
        self, method: str, path: str, *, read_timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """The JSON of ``method path``; ``kwargs`` go to :meth:`requests.Session.request`."""
        response = self._send(method, path, read_timeout=read_timeout, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code,
                BAD_RESPONSE,
                f"the answer of {method} {path} is not JSON "
                f"({response.headers.get('Content-Type', 'no content type')})",
            ) from None

    # --- the API ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/vx11/status")

    def runtimes(self) -> dict[str, Any]:
        return self.request("GET", "/vx11/runtimes")

    def open_window(self, target: str, ttl_seconds: int | None, reason: str | None) -> dict:
        body: dict[str, Any] = {"target": target, "reason": reason}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        return self.request("POST", "/vx11/window/open", json=body)

    def close_window(self, target: str, reason: str | None, cancel_running: bool) -> dict:
        body = {"target": target, "reason": reason, "cancel_running": cancel_running}
        return self.request("POST", "/vx11/window/close", json=body)

    def window_status(self, target: str) -> dict[str, Any]:
        return self.request("GET", f"/vx11/window/status/{_segment(target)}")

    def spawn(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """The accepted spawn, or the refusal (``error: off_by_policy``), as the API says."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", "/vx11/spawn", json=body, headers=headers)

    def get_spawn(self, ident: str, wait: float = 0, encoding: str = "utf8") -> dict[str, Any]:
        """The spawn's record; ``wait`` (up to 60 s) waits for it to be terminal;
        ``encoding`` base64: its output as base64 of its exact bytes."""
        params: dict[str, Any] = {"wait": wait} if wait else {}
        if encoding != "utf8":
            params["encoding"] = encoding
        return self.request(
            "GET", f"/vx11/spawn/{_segment(ident)}", params=params, read_timeout=self.timeout + wait
        )

    def artifact(self, ident: str, path: str) -> bytes:
        """The bytes of an artifact the spawn kept."""
        quoted = "/".join(_segment(part) for part in path.split("/"))
        response = self._send("GET", f"/vx11/spawn/{_segment(ident)}/artifacts/{quoted}")
        return response.content

    def cancel_spawn(self, ident: str) -> dict[str, Any]:
        return self.request("POST", f"/vx11/spawn/{_segment(ident)}/cancel")

    def page(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """One page of a listing (``/vx11/spawns``, ``/vx11/audit``): its rows under the
        listing's key, and ``next_cursor``."""
        return self.request("GET", path, params=params)

    def pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every page of a listing, following ``next_cursor``."""
        params = dict(params)
        while True:
            page = self.page(path, params)
            yield page
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def events(
        self, ident: str, last_event_id: str | None = None, encoding: str = "utf8"
    ) -> Iterator[ServerEvent]:
        """The spawn's Server-Sent Events as they arrive, until the gateway ends the stream;
        with ``last_event_id``, those after that event (a gateway that cannot resume
        starts again from the first).

        A broken or silent stream raises :class:`ApiError` with ``status`` None."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers[LAST_EVENT_ID] = last_event_id
        response = self._send(
            "GET",
            f"/vx11/spawn/{_segment(ident)}/events",
            params={"encoding": encoding} if encoding != "utf8" else None,
            stream=True,
            read_timeout=EVENTS_READ_TIMEOUT,
            headers=headers,
        )
        with response:
            try:
                lines = response.iter_lines(decode_unicode=False)
                yield from parse_sse(line.decode("utf-8", "replace") for line in lines)
            except requests.exceptions.RequestException as exc:
                raise ApiError(
                    None, UNREACHABLE, f"the event stream broke off: {_reason(exc)}"
                ) from None

    def create_token(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/vx11/tokens", json=body)

    def list_tokens(self) -> dict[str, Any]:
        return self.request("GET", "/vx11/tokens")

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/vx11/tokens/{_segment(token_id)}")

    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "/vx11/token")


def _segment(value: str) -> str:
    """``value`` as one URL path segment: an id with a slash cannot reach another route."""
    return quote(value, safe="")
