"""Result callbacks in-process: the URL policy (a refused address is never connected
to), the delivery pinned to the vetted address, the signature, and what the record
shows. Every connection goes to a loopback listener the test starts; host names are
answered by stand-in resolvers, never by DNS."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port
from vx11 import create_app
from vx11.core.callbacks import (
    BACKOFF_CAP,
    CALLBACK_QUEUE,
    CALLBACK_TASK,
    CallbackPolicy,
    CallbackRefused,
    Destination,
    UnresolvableHost,
    backoff,
    signature,
    signed_headers,
    verify,
)
from vx11.core.config import Settings
from vx11.core.ledger import Ledger
from vx11.core.record import SpawnRecord
from vx11.core.states import SpawnStatus

SECRET = "callback-test-secret"
SPAWN = {"task_type": "shell", "code": "echo hi", "ttl_seconds": 30}
PUBLIC = "93.184.216.34"  # only ever handed out by stand-in resolvers: never connected to


# --- helpers: loopback receivers and stand-in resolvers ----------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 that records every connection and POST, answering
    each POST with the next of ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int] | tuple[int, ...] = ()) -> None:
        self.statuses = list(statuses)
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(
                    {
                        "at": time.monotonic(),
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                    }
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                request = super().get_request()
                receiver.connections += 1
                return request

        self.server = _outside_ephemeral_range(Server, Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _outside_ephemeral_range(server_class: Any, handler: Any) -> ThreadingHTTPServer:
    """A server on a loopback port below the kernel's ephemeral range, which no other
    test's ``free_port`` (a port the kernel handed out, then freed) can name: a test in
    another process probing its own server's port never lands here and counts as a
    connection."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(10000, low), 200):
        with contextlib.suppress(OSError):
            return server_class(("127.0.0.1", port), handler)
    raise RuntimeError(f"no free loopback port between 10000 and {low}")


@contextlib.contextmanager
def silent_listener() -> Iterator[socket.socket]:
    """A loopback port that accepts connections and never answers."""
    sock = socket.create_server(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def resolver(answers: dict[str, list[str]]):
    """A stand-in for ``socket.getaddrinfo``: ``answers`` maps a host to its addresses."""

    def resolve(host: str, port: int, *args: Any, **kwargs: Any):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (address, port, 0, 0) if ":" in address else (address, port),
            )
            for address in answers[host]
        ]

    return resolve


@pytest.fixture
def no_dns(monkeypatch):
    """Any lookup of a name (not a numeric address) fails instead of reaching DNS: a
    connection that is not pinned to its vetted address fails, and sends nothing."""
    real = socket.getaddrinfo

    def numeric_only(host, port, family=0, type=0, proto=0, flags=0):
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)


def settings(**overrides: Any) -> Settings:
    values = {
        "callback_secret": SECRET,
        "callback_allowed_hosts": "127.0.0.1",
        "callback_allow_private": "127.0.0.0/8",
        "callback_timeout": 2.0,
        "callback_backoff_base": 0.2,
        **overrides,
    }
    return Settings.from_env({}, values)


def policy(hosts: str = "hooks.example.com", private: str = "", answers=None) -> CallbackPolicy:
    cfg = settings(callback_allowed_hosts=hosts, callback_allow_private=private)
    return CallbackPolicy.from_settings(cfg, resolver(answers or {}))


# --- the URL policy ----------------------------------------------------------------------


HOSTS_BY_PATTERN = {
    "hooks.example.com": {
        "allowed": ["hooks.example.com", "HOOKS.Example.com."],
        "refused": ["example.com", "evil-hooks.example.com"],
    },
    "*.example.com": {
        "allowed": ["a.example.com", "a.b.example.com"],
        "refused": ["example.com", "evilexample.com", "example.com.evil.net"],
    },
    "203.0.113.7": {"allowed": ["203.0.113.7"], "refused": []},
    "*.113.7": {"allowed": [], "refused": ["203.0.113.7"]},
    "::1": {"allowed": ["[::1]"], "refused": []},
}
"""Each pattern of ``VX11_CALLBACK_ALLOWED_HOSTS``, and hosts it allows and refuses."""


@pytest.mark.parametrize(
    ("pattern", "host", "allowed"),
    [
        (pattern, host, verdict == "allowed")
        for pattern, hosts in HOSTS_BY_PATTERN.items()
        for verdict, names in hosts.items()
        for host in names
    ],
)
def test_a_host_is_allowed_only_by_its_exact_name_or_a_wildcard_suffix(pattern, host, allowed):
    assert policy(hosts=pattern).host_allowed(host) is allowed


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://hooks.example.com/", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://hooks.example.com/", "http or https"),
        ("hooks.example.com/hook", "http or https"),
        ("http://user:pw@hooks.example.com/", "user name or password"),
        ("http://hooks.example.com@127.0.0.1/", "user name or password"),
        ("http:///hook", "must name a host"),
        ("http://hooks.example.com:99999/", "invalid port"),
        ("http://hooks.example.com:0/", "invalid port"),
        ("http://hooks.example.com/a b", "visible ASCII"),
        ("http://hooks.example.com/\r\nX-Injected: 1", "visible ASCII"),
        ("http://hooks.exämple.com/", "visible ASCII"),
        ("http://a\\.hooks.example.com/", "letters, digits"),
        ("http://other.example.com/", "not in VX11_CALLBACK_ALLOWED_HOSTS"),
        ("http://hooks.example.com/" + "x" * 2048, "longer than"),
    ],
)
def test_a_malformed_or_unlisted_url_is_refused(url, why):
    with pytest.raises(CallbackRefused, match=why):
        policy(answers={"hooks.example.com": [PUBLIC]}).vet(url)


def test_an_allowed_host_with_public_addresses_is_vetted_with_them():
    destination = policy(answers={"hooks.example.com": [PUBLIC, "2606:2800:220:1::1"]}).vet(
        "HTTPS://hooks.example.com/cb/1?spawn=x#frag"
    )
    assert destination == Destination(
        url="HTTPS://hooks.example.com/cb/1?spawn=x#frag",
        scheme="https",
        host="hooks.example.com",
        port=443,
        target="/cb/1?spawn=x",
        addresses=(PUBLIC, "2606:2800:220:1::1"),
    )


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "127.3.4.5",
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 around 169.254.169.254
    ],
)
def test_a_host_with_any_non_public_address_is_refused(address):
    answers = {"hooks.example.com": [PUBLIC, address]}
    with pytest.raises(CallbackRefused, match="private or reserved"):
        policy(answers=answers).vet("http://hooks.example.com/")


def test_an_allowed_private_network_lets_its_addresses_through_and_no_others():
    allowing = policy(private="10.0.0.0/8,fd00::/8")
    for address in ("10.1.2.3", "::ffff:10.1.2.3", "fd12::1"):
        assert allowing.address_allowed(_ip(address)), address
    for address in ("192.168.1.1", "127.0.0.1", "169.254.169.254", "fc00::1"):
        assert not allowing.address_allowed(_ip(address)), address


def test_a_host_that_does_not_resolve_is_refused():
    with pytest.raises(UnresolvableHost, match="does not resolve"):
        policy(answers={}).vet("http://hooks.example.com/")


def test_a_bad_private_network_is_refused_when_the_settings_are_read():
    with pytest.raises(ValueError, match="VX11_CALLBACK_ALLOW_PRIVATE"):
        Settings.from_env({"VX11_CALLBACK_ALLOW_PRIVATE": "10.0.0.1/8"})


def _ip(text: str):
    import ipaddress

    return ipaddress.ip_address(text)


# --- the gateway: POST /vx11/spawn with a callback_url ------------------------------------


@pytest.fixture
def callback_app(test_config):
    return create_app(
        {**test_config, "callback_secret": SECRET, "callback_allowed_hosts": "127.0.0.1"}
    )


@pytest.fixture
def window(callback_app, auth):
    client = callback_app.test_client()
    response = client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    assert response.status_code == 200, response.json
    return client


def test_a_loopback_callback_url_is_refused_before_any_connection(callback_app, window, auth):
    with Receiver() as receiver:
        response = window.post(
            "/vx11/spawn", json={**SPAWN, "callback_url": receiver.url()}, headers=auth
        )
        time.sleep(0.2)
        assert receiver.connections == 0 and receiver.requests == []
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"
    [message] = response.json["fields"]["callback_url"]
    assert "127.0.0.1" in message and "private or reserved" in message
    assert callback_app.extensions["vx11"].ledger.page().rows == []  # nothing accepted


def test_a_callback_url_off_the_allow_list_is_422_naming_the_field(window, auth):
    body = {**SPAWN, "callback_url": "http://127.0.0.2:9/hook"}
    response = window.post("/vx11/spawn", json=body, headers=auth)
    assert response.status_code == 422
    assert "VX11_CALLBACK_ALLOWED_HOSTS" in response.json["fields"]["callback_url"][0]


def test_without_a_secret_a_callback_url_is_422_callbacks_disabled(test_config, auth):
    app = create_app({**test_config, "callback_allowed_hosts": "127.0.0.1"})
    client = app.test_client()
    client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    body = {**SPAWN, "callback_url": "http://127.0.0.1:9/hook"}
    response = client.post("/vx11/spawn", json=body, headers=auth)
    assert response.status_code == 422
    assert response.json["error"] == "callbacks_disabled"
    assert "callback_url" in response.json["fields"]
    without = client.post("/vx11/spawn", json={**SPAWN, "callback_url": None}, headers=auth)
    assert without.status_code == 200 and without.json["status"] == "QUEUED"


def test_an_accepted_callback_url_is_kept_and_its_deliveries_show_on_the_record(test_config, auth):
    from workers.callbacks import record_attempt

    app = create_app({**test_config, **_loopback_allowed()})
    client = app.test_client()
    client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    url = f"http://127.0.0.1:{free_port()}/hook?spawn=1"
    accepted = client.post("/vx11/spawn", json={**SPAWN, "callback_url": url}, headers=auth)
    assert accepted.status_code == 200, accepted.json
    plain = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    store = app.extensions["vx11"].ledger
    spawn_uuid = accepted.json["spawn_uuid"]
    assert store.get(spawn_uuid)["callback_url"] == url
    assert client.get(f"/vx11/spawn/{spawn_uuid}", headers=auth).json["callbacks"] is None
    first = {"at": "2024-01-01T00:00:00.000Z", "attempt": 1, "status_code": 503,
             "duration_ms": 3, "outcome": "retrying", "retry_in": 2.0}  # fmt: skip
    second = {**first, "attempt": 2, "status_code": 200, "outcome": "delivered"}
    del second["retry_in"]
    record_attempt(store, spawn_uuid, first)
    record_attempt(store, spawn_uuid, second)
    record = client.get(f"/vx11/spawn/{spawn_uuid}", headers=auth).json
    assert record["callbacks"] == [first, second]
    assert client.get(f"/vx11/spawn/{plain['spawn_id']}", headers=auth).json["callbacks"] is None
    history = client.get("/vx11/spawns", headers=auth).json["spawns"]
    assert {item["spawn_uuid"]: item["callbacks"] for item in history}[spawn_uuid] == [
        first,
        second,
    ]


def _loopback_allowed() -> dict[str, str]:
    return {
        "callback_secret": SECRET,
        "callback_allowed_hosts": "127.0.0.1",
        "callback_allow_private": "127.0.0.0/8",
    }


# --- one delivery ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> Ledger:
    ledger = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.create_schema()
    return ledger


def finished_record(store: Ledger, callback_url: str) -> dict[str, Any]:
    record = store.add({**SPAWN, "callback_url": callback_url, "args": []})
    store.transition(record["spawn_uuid"], SpawnStatus.RUNNING, worker="w@h")
    return store.transition(
        record["spawn_uuid"], SpawnStatus.DONE, exit_code=0, stdout="hi\n", stderr="",
        duration_ms=5, sandbox="basic",
    )  # fmt: skip


def test_a_delivery_posts_the_signed_record_to_its_url(store):
    from workers.callbacks import DELIVERED, attempt_delivery

    with Receiver() as receiver:
        record = finished_record(store, receiver.url("/hook?spawn=1"))
        entry = attempt_delivery(record, settings(), attempt=1)
    assert entry["outcome"] == DELIVERED and entry["status_code"] == 200, entry
    assert entry["attempt"] == 1 and entry["duration_ms"] >= 0 and entry["at"].endswith("Z")
    [request] = receiver.requests
    assert request["path"] == "/hook?spawn=1"
    headers = request["headers"]
    assert headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert headers["Content-Type"] == "application/json"
    assert verify(SECRET, request["body"], headers["X-VX11-Timestamp"], headers["X-VX11-Signature"])
    body = json.loads(request["body"])
    expected = SpawnRecord(exclude=("callbacks",)).dump({**record, "processes": None})
    assert body == expected
    assert body["status"] == "DONE" and body["stdout"] == "hi\n"
    assert "code" not in body and "callbacks" not in body


def test_the_post_goes_to_the_vetted_address_never_to_a_new_lookup(store, no_dns):
    from workers.callbacks import DELIVERED, attempt_delivery

    with Receiver() as receiver:
        record = finished_record(store, receiver.url(host="hooks.vx11.test"))
        cfg = settings(callback_allowed_hosts="hooks.vx11.test")
        entry = attempt_delivery(record, cfg, 1, resolver({"hooks.vx11.test": ["127.0.0.1"]}))
    assert entry["outcome"] == DELIVERED, entry
    [request] = receiver.requests
    assert request["headers"]["Host"] == f"hooks.vx11.test:{receiver.port}"


def test_an_address_that_turns_private_by_delivery_is_refused_without_connecting(store):
    """DNS rebinding: public when the gateway looked, loopback when the worker does."""
    from workers.callbacks import FAILED, attempt_delivery

    cfg = settings(callback_allowed_hosts="hooks.vx11.test", callback_allow_private="")
    with Receiver() as receiver:
        url = receiver.url(host="hooks.vx11.test")
        CallbackPolicy.from_settings(cfg, resolver({"hooks.vx11.test": [PUBLIC]})).vet(url)
        record = finished_record(store, url)
        entry = attempt_delivery(record, cfg, 1, resolver({"hooks.vx11.test": ["127.0.0.1"]}))
        time.sleep(0.2)
        assert receiver.connections == 0
    assert entry["outcome"] == FAILED
    assert entry["error"].startswith("refused:") and "127.0.0.1" in entry["error"]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (500, "retrying"),
        (503, "retrying"),
        (429, "retrying"),
        (400, "failed"),
        (404, "failed"),
        (410, "failed"),
        (301, "failed"),  # a redirect is not followed
    ],
)
def test_the_answer_decides_delivered_retry_or_final(store, status, outcome):
    from workers.callbacks import attempt_delivery

    with Receiver([status]) as receiver:
        entry = attempt_delivery(finished_record(store, receiver.url()), settings(), 1)
    assert (entry["status_code"], entry["outcome"]) == (status, outcome)
    assert len(receiver.requests) == 1
    assert ("retry_in" in entry) is (outcome == "retrying")


def test_the_last_attempt_fails_for_good_even_on_a_5xx(store):
    from workers.callbacks import attempt_delivery

    cfg = settings(callback_max_attempts=3)
    with Receiver([500, 500]) as receiver:
        record = finished_record(store, receiver.url())
        assert attempt_delivery(record, cfg, 2)["outcome"] == "retrying"
        assert attempt_delivery(record, cfg, 3)["outcome"] == "failed"


def test_a_refused_connection_is_retried_after_a_doubling_backoff(store):
    from workers.callbacks import attempt_delivery

    record = finished_record(store, f"http://127.0.0.1:{free_port()}/hook")
    entries = [attempt_delivery(record, settings(), attempt) for attempt in (1, 2, 3)]
    assert [e["outcome"] for e in entries] == ["retrying"] * 3
    assert [e["retry_in"] for e in entries] == [0.2, 0.4, 0.8]
    assert all("ConnectionRefusedError" in e["error"] for e in entries)


def test_a_receiver_that_never_answers_times_out_and_is_retried(store):
    from workers.callbacks import attempt_delivery

    with silent_listener() as sock:
        record = finished_record(store, f"http://127.0.0.1:{sock.getsockname()[1]}/hook")
        started = time.monotonic()
        entry = attempt_delivery(record, settings(callback_timeout=0.3), 1)
    assert time.monotonic() - started < 2
    assert entry["outcome"] == "retrying"
    assert entry["error"] == "no answer within 0.3 s"


def test_the_worker_refuses_to_deliver_without_a_secret(store):
    from workers.callbacks import attempt_delivery

    with Receiver() as receiver:
        entry = attempt_delivery(
            finished_record(store, receiver.url()), settings(callback_secret=""), 1
        )
        assert receiver.connections == 0
    assert entry["outcome"] == "failed" and "disabled" in entry["error"]


def test_backoff_doubles_from_its_base_and_is_capped():
    assert [backoff(n, 2.0) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert backoff(30, 2.0) == BACKOFF_CAP


# --- https: pinned address, certificate checked for the host name ------------------------


@pytest.fixture
def certificate(tmp_path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=hooks.vx11.test", "-addext", "subjectAltName=DNS:hooks.vx11.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@contextlib.contextmanager
def tls_receiver(cert: Path, key: Path) -> Iterator[Receiver]:
    receiver = Receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
    with receiver:
        yield receiver


def test_https_goes_to_the_pinned_address_and_checks_the_host_names_certificate(
    certificate, no_dns
):
    cert, key = certificate
    trusting = ssl.create_default_context(cafile=str(cert))
    body = b'{"status":"DONE"}'
    with tls_receiver(cert, key) as receiver:
        good = Destination("https://hooks.vx11.test/h", "https", "hooks.vx11.test",
                           receiver.port, "/h", ("127.0.0.1",))  # fmt: skip
        assert good.post(body, signed_headers(SECRET, body), 2.0, trusting) == 200
        other = Destination("https://other.vx11.test/h", "https", "other.vx11.test",
                            receiver.port, "/h", ("127.0.0.1",))  # fmt: skip
        with pytest.raises(ssl.SSLCertVerificationError):
            other.post(body, signed_headers(SECRET, body), 2.0, trusting)
        with pytest.raises(ssl.SSLCertVerificationError):  # not trusted by default
            good.post(body, signed_headers(SECRET, body), 2.0)
    [request] = receiver.requests
    assert request["headers"]["Host"] == f"hooks.vx11.test:{receiver.port}"


# --- signing -----------------------------------------------------------------------------


def test_the_signature_is_the_hmac_of_timestamp_dot_body():
    body = b'{"spawn_id":"spawn-1234abcd"}'
    headers = signed_headers(SECRET, body, now=1_700_000_000.9)
    assert headers["X-VX11-Timestamp"] == "1700000000"
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-VX11-Signature"] == f"sha256={expected}"
    assert signature(SECRET, "1700000000", body) == headers["X-VX11-Signature"]


def test_a_signature_verifies_only_for_its_body_secret_and_a_recent_timestamp():
    body, now = b'{"status":"DONE"}', 1_700_000_000
    headers = signed_headers(SECRET, body, now=now)
    stamp, sig = headers["X-VX11-Timestamp"], headers["X-VX11-Signature"]
    assert verify(SECRET, body, stamp, sig, now=now + 10)
    assert not verify(SECRET, body + b" ", stamp, sig, now=now)
    assert not verify("another-secret", body, stamp, sig, now=now)
    assert not verify(SECRET, body, str(now + 1), sig, now=now)  # the timestamp is signed
    assert not verify(SECRET, body, stamp, sig, now=now + 301)  # a replay, later
    assert not verify(SECRET, body, stamp, sig.upper(), now=now)
    for bad_stamp, bad_sig in ((None, sig), (stamp, None), ("", sig), ("-1", sig), ("١٢", sig)):
        assert not verify(SECRET, body, bad_stamp, bad_sig, now=now)
    assert not verify("", body, stamp, signature("", stamp, body), now=now)


# --- the worker side: queued when a spawn ends, on its own queue -------------------------


def test_a_terminal_record_queues_its_callback_only_when_it_has_a_url(monkeypatch):
    import workers.spawner as spawner

    sent: list[tuple[str, tuple]] = []
    monkeypatch.setattr(spawner.app, "send_task", lambda name, args: sent.append((name, args)))
    monkeypatch.setattr(spawner, "events", lambda: _NoEvents())
    base = {"spawn_uuid": "u-1", "status": "DONE", "stdout": "", "stderr": ""}
    spawner.finished({**base, "callback_url": None})
    assert sent == []
    spawner.finished({**base, "callback_url": "http://127.0.0.1:9/hook"})
    assert sent == [(CALLBACK_TASK, ("u-1",))]


def test_the_callback_task_is_routed_to_its_own_queue():
    from workers.celery import app

    assert CALLBACK_TASK in app.tasks
    route = app.amqp.router.route({}, CALLBACK_TASK)
    assert route["queue"].name == CALLBACK_QUEUE
    assert app.amqp.router.route({}, "vx11.spawn")["queue"].name != CALLBACK_QUEUE


class _NoEvents:
    def finish(self, *args: Any) -> None:
        pass
