"""Result callbacks, shared by the gateway and the workers: which URLs a spawn may be
called back at (the SSRF guard), how a delivery reaches the address that was vetted,
and how a delivery is signed and verified.

The guard decides before any connection is made. A URL must be http or https, carry no
user information and name a host on ``VX11_CALLBACK_ALLOWED_HOSTS``; the host is then
resolved, and *every* address it resolves to must be public, or inside a
``VX11_CALLBACK_ALLOW_PRIVATE`` network. The gateway vets a URL when a spawn is
submitted; the worker vets it again before each delivery and connects to an address it
vetted, never to the name, so a DNS answer that changes in between (DNS rebinding)
cannot steer the POST elsewhere. Redirects are not followed.

Signature scheme. Each delivery carries::

    X-VX11-Timestamp: <unix time of the delivery, whole seconds>
    X-VX11-Signature: sha256=<hex HMAC-SHA256(VX11_CALLBACK_SECRET, "<timestamp>." + body)>

where body is the raw request body, byte for byte. A receiver recomputes the HMAC over
the timestamp, a dot and the body it received, compares in constant time, and refuses a
timestamp too far from its own clock (:func:`verify` does all three), so a captured
delivery cannot be replayed later. Deliveries are at least once: a receiver that must
act once keys on the body's ``spawn_uuid``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from marshmallow import ValidationError

from vx11.core.config import Settings
from vx11.core.errors import VX11Error
from vx11.version import __version__

CALLBACK_TASK = "vx11.callback"
"""The delivery task's name; the worker queues it when a spawn with a callback ends."""
CALLBACK_QUEUE = "callbacks"
"""Celery queue of the delivery task, apart from the spawns so a slow receiver never
holds up a spawn's queue (and can be given workers of its own)."""
SIGNATURE_HEADER = "X-VX11-Signature"
"""``sha256=<hex>``: the HMAC-SHA256 of ``<timestamp>.<body>``."""
TIMESTAMP_HEADER = "X-VX11-Timestamp"
"""The delivery's Unix time in whole seconds, covered by the signature."""
REPLAY_TOLERANCE = 300
"""Seconds :func:`verify` lets a timestamp be away from the receiver's clock."""
MAX_URL_LENGTH = 2048
"""Longest ``callback_url``, characters."""
BACKOFF_CAP = 600.0
"""Longest wait between two delivery attempts, seconds."""
USER_AGENT = f"VX11-Callback/{__version__}"
HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")

Resolver = Callable[..., list[tuple[Any, ...]]]
"""``socket.getaddrinfo`` or a stand-in with its signature."""
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class CallbackRefused(ValueError):
    """Raised when a callback URL is not one VX11 may call; the message says why."""


class UnresolvableHost(CallbackRefused):
    """Raised when a callback URL's host has no address (now: it may have one later)."""


class CallbacksDisabled(VX11Error):
    """Raised when a spawn asks for a callback and no callback secret is configured."""

    status, code = 422, "callbacks_disabled"
    message = "callbacks are disabled on this server (VX11_CALLBACK_SECRET is not set)"


# --- the URL policy ---------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """A vetted callback URL: where to connect (``addresses``, all allowed) and what to
    ask for there."""

    url: str
    scheme: str
    host: str
    port: int
    target: str
    """Path and query string, as the request line carries them."""
    addresses: tuple[str, ...]

    def post(
        self,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        context: ssl.SSLContext | None = None,
    ) -> int:
        """POST ``body`` to one of the vetted addresses and return the status code. The
        Host header and, for https, the TLS server name and certificate check use the
        host name; the connection itself goes to the address. No redirect is followed.
        Raises :class:`OSError` or :class:`http.client.HTTPException` when no answer
        comes back."""
        last_error: OSError | None = None
        for address in self.addresses:
            conn = self._connection(address, timeout, context)
            try:
                conn.connect()
            except OSError as exc:  # try the host's next vetted address
                conn.close()
                last_error = exc
                continue
            try:
                conn.request("POST", self.target, body=body, headers=headers)
                return conn.getresponse().status  # the body is not needed: not read
            finally:
                conn.close()
        raise last_error or OSError(f"no address to connect to for {self.host}")

    def _connection(
        self, address: str, timeout: float, context: ssl.SSLContext | None
    ) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return _PinnedHTTPS(
                self.host, self.port, address, timeout, context or ssl.create_default_context()
            )
        return _PinnedHTTP(self.host, self.port, address, timeout)


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to ``address`` that speaks to ``host`` (Host header)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(_PinnedHTTP):
    """:class:`_PinnedHTTP` over TLS: SNI and the certificate check are for ``host``."""

    default_port = http.client.HTTPS_PORT

    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, address, timeout)
        self.ssl_context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.ssl_context.wrap_socket(self.sock, server_hostname=self.host)


@dataclass(frozen=True)
class CallbackPolicy:
    """Which callback URLs may be called: see the module's docstring."""

    allowed_hosts: tuple[str, ...] = ()
    """Exact host names (or IP literals), and ``*.domain`` for any subdomain of domain."""
    allow_private: tuple[Network, ...] = ()
    """Networks allowed although they are not public."""
    resolve: Resolver = field(default=socket.getaddrinfo, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, resolve: Resolver | None = None) -> CallbackPolicy:
        return cls(
            allowed_hosts=tuple(_normal_host(host) for host in settings.callback_allowed_hosts),
            allow_private=tuple(ipaddress.ip_network(c) for c in settings.callback_allow_private),
            resolve=resolve or socket.getaddrinfo,
        )

    def vet(self, url: str) -> Destination:
        """The :class:`Destination` ``url`` names, if the policy allows it and every
        address its host resolves to now; else :class:`CallbackRefused`. Makes no
        connection (a name lookup is all it sends)."""
        scheme, host, port, target = self.check_url(url)
        addresses = self.addresses_of(host, port)
        for text in addresses:
            if not self.address_allowed(_address(text)):
                raise CallbackRefused(
                    f"{host} resolves to {text}, a private or reserved address "
                    "(not in VX11_CALLBACK_ALLOW_PRIVATE)"
                )
        return Destination(url, scheme, host, port, target, addresses)

    def check_url(self, url: str) -> tuple[str, str, int, str]:
        """``(scheme, host, port, target)`` of ``url`` if its form and host are
        allowed; the addresses are not looked at."""
        if len(url) > MAX_URL_LENGTH:
            raise CallbackRefused(f"longer than {MAX_URL_LENGTH} characters")
        if not url.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
            raise CallbackRefused(
                "may hold only visible ASCII characters (percent-encode the rest, "
                "punycode for a host name)"
            )
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise CallbackRefused("must be an http or https URL")
        if "@" in parts.netloc:
            raise CallbackRefused("may not carry a user name or password")
        if not parts.hostname:
            raise CallbackRefused("must name a host")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise CallbackRefused("has an invalid port")
        port = port or (443 if scheme == "https" else 80)
        host = _normal_host(parts.hostname)
        if not (_is_ip_literal(host) or HOST_NAME.fullmatch(host)):
            raise CallbackRefused("must name a host by letters, digits, - _ and dots")
        if not self.host_allowed(host):
            raise CallbackRefused(f"host {host} is not in VX11_CALLBACK_ALLOWED_HOSTS")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return scheme, host, port, target

    def host_allowed(self, host: str) -> bool:
        host = _normal_host(host)
        for pattern in self.allowed_hosts:
            if pattern.startswith("*."):
                if not _is_ip_literal(host) and host.endswith(pattern[1:]):
                    return True
            elif host == pattern:
                return True
        return False

    def addresses_of(self, host: str, port: int) -> tuple[str, ...]:
        """Every address ``host`` resolves to, in the resolver's order."""
        try:
            infos = self.resolve(host, port, 0, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UnresolvableHost(f"host {host} does not resolve: {exc}") from None
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise UnresolvableHost(f"host {host} has no address")
        return addresses

    def address_allowed(self, address: Address) -> bool:
        """Public, or inside an allowed network. An IPv4 address an IPv6 one carries
        (mapped, 6to4, Teredo) must pass too."""
        mapped = getattr(address, "ipv4_mapped", None)
        for candidate in (address, mapped):
            if candidate is not None and any(
                candidate.version == net.version and candidate in net for net in self.allow_private
            ):
                return True
        return all(_is_public(candidate) for candidate in _with_embedded(address))


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _address(text: str) -> Address:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone: it is no network


def _with_embedded(address: Address) -> Iterator[Address]:
    yield address
    if isinstance(address, ipaddress.IPv6Address):
        yield from (a for a in (address.ipv4_mapped, address.sixtofour) if a is not None)
        if address.teredo is not None:
            yield from address.teredo


def _is_public(address: Address) -> bool:
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def callback_url_validator(
    settings: Settings, resolve: Resolver | None = None
) -> Callable[[str], None]:
    """The ``callback_url`` field's validator: :class:`CallbacksDisabled` without a
    secret, a validation error (422 naming the field) when the policy refuses it."""
    policy = CallbackPolicy.from_settings(settings, resolve)

    def check(url: str) -> None:
        if not settings.callback_secret:
            raise CallbacksDisabled(fields={"callback_url": [CallbacksDisabled.message]})
        try:
            policy.vet(url)
        except CallbackRefused as exc:
            raise ValidationError(str(exc)) from None

    return check


# --- signing ----------------------------------------------------------------------------


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256, keyed with ``secret``, of ``<timestamp>.<body>``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers of one delivery of ``body``: content type, timestamp, signature."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def verify(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature_header: str | None,
    tolerance: float = REPLAY_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether a delivery is genuine: ``signature_header`` is the signature of ``body``
    at ``timestamp``, and ``timestamp`` is within ``tolerance`` seconds of ``now``."""
    if not (secret and signature_header and timestamp and timestamp.isascii()):
        return False
    if not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), signature_header)


def backoff(attempt: int, base: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (from 1): ``base``,
    doubling each time, never above :data:`BACKOFF_CAP`."""
    delay: float = base * 2 ** (attempt - 1)  # int ** int is typed Any: a negative power is a float
    return min(delay, BACKOFF_CAP)
