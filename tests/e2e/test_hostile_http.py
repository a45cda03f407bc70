"""Hostile HTTP through real gunicorn (the shared stack's; its Celery worker is not
needed): bodies far over the limit leave the workers' memory flat, oversized request
lines and headers and ambiguous message framing are refused by gunicorn itself, and the
gateway stays up with the same worker processes. Raw sockets, since no HTTP client sends
these.

Not tested here (it takes minutes by nature): a client that stalls mid-headers or
mid-body holds one gthread thread until it disconnects (docs/security.md)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from tests.support import TOKEN, child_pids, http

MIB = 1 << 20
LIMIT = MIB
"""The body limit (VX11_MAX_BODY_BYTES, its default)."""
STREAMED = 200 * MIB
MEMORY_SLACK_KB = 32 * 1024
"""Growth of a worker's RSS allowed while a 200 MiB body is streamed at it."""
AUTH = b"X-VX11-Token: " + TOKEN["X-VX11-Token"].encode() + b"\r\n"
SPAWN = json.dumps({"task_type": "python", "code": "print(1)"}).encode()


class Gateway:
    def __init__(self, base: str, master_pid: int) -> None:
        self.base, self.master_pid = base, master_pid
        self.port = int(base.rsplit(":", 1)[1])

    def workers(self) -> set[int]:
        return child_pids(self.master_pid)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def exchange(self, data: bytes, *, half_close: bool = False) -> bytes:
        """Send ``data``, then read everything until the gateway closes."""
        with self.connect() as sock:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            return read_until_closed(sock)

    def window_is_open(self) -> bool:
        status, window = http("GET", f"{self.base}/vx11/window/status/spawner", headers=TOKEN)
        assert status == 200, window
        return window["is_open"]


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    return {"max_body_bytes": str(LIMIT)}


@pytest.fixture(scope="module")
def gateway(stack):
    gateway = Gateway(stack.base, stack.gateway.proc.pid)
    workers = gateway.workers()
    assert len(workers) == 2
    yield gateway
    still_up = http("GET", f"{stack.base}/health")[0] == 200 and gateway.workers() == workers
    assert still_up, "the gateway went down or restarted a worker:\n" + stack.gateway.log()


@pytest.fixture
def closed_window(gateway):
    status, _ = http("POST", f"{gateway.base}/vx11/window/close", {"target": "spawner"}, TOKEN)
    assert status == 200
    assert not gateway.window_is_open()


def read_until_closed(sock: socket.socket) -> bytes:
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:  # the gateway closed with our bytes still unread
        pass
    except TimeoutError:  # it did not close: what came is all there is
        pass
    return bytes(received)


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, the connection left open."""
    received = b""
    while True:
        _, end_of_head, body = received.partition(b"\r\n\r\n")
        if end_of_head and len(body) >= int(response(received)[1]["content-length"]):
            return received
        piece = sock.recv(65536)
        assert piece, f"closed before a whole response: {received!r}"
        received += piece


def response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of the first HTTP response in ``raw``."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


def json_error(raw: bytes) -> tuple[int, dict]:
    status, headers, body = response(raw)
    assert headers["content-type"] == "application/json", raw[:500]
    return status, json.loads(body[: int(headers["content-length"])])


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (the peak) of ``pid``, KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def request(method: str, target: str, *headers: bytes, body: bytes = b"") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: vx11\r\n".encode()
        + b"".join(headers)
        + b"\r\n"
        + body
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


# --- bodies ------------------------------------------------------------------------------


def test_a_200_mib_chunked_body_is_refused_413_and_worker_memory_stays_flat(gateway):
    workers = gateway.workers()
    warm_up = request(
        "POST", "/vx11/spawn", AUTH, b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
        body=chunk(b" " * (LIMIT + 1)) + chunk(b""),
    )  # fmt: skip
    for _ in range(4):  # both workers: imports, first requests, a first 413
        gateway.exchange(warm_up)
    before = {pid: memory_kb(pid) for pid in workers}

    sock = gateway.connect()
    sock.sendall(request("POST", "/vx11/spawn", AUTH, b"Transfer-Encoding: chunked\r\n"))
    answer = bytearray()
    reader = threading.Thread(target=lambda: answer.extend(read_until_closed(sock)))
    reader.start()
    piece, sent = chunk(b"[" * MIB), 0
    try:
        while sent < STREAMED:
            sock.sendall(piece)
            sent += MIB
        sock.sendall(chunk(b""))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway stopped reading: the point
    reader.join(30)
    sock.close()
    after = {pid: memory_kb(pid) for pid in workers}

    status, error = json_error(bytes(answer))
    assert (status, error["error"]) == (413, "payload_too_large")
    report = {pid: (before[pid], after[pid]) for pid in workers}
    print(f"streamed {sent // MIB} MiB before the gateway closed; worker memory KiB: {report}")
    for pid in workers:
        for measure in ("VmRSS", "VmHWM"):
            grew = after[pid][measure] - before[pid][measure]
            assert grew < MEMORY_SLACK_KB, (pid, measure, before[pid], after[pid])
    assert gateway.workers() == workers


def test_a_content_length_over_the_limit_is_refused_before_the_body_is_sent(gateway):
    headers = request("POST", "/vx11/spawn", AUTH, b"Content-Length: %d\r\n" % STREAMED)
    with gateway.connect() as sock:
        sock.sendall(headers)  # and not one byte of the body
        status, error = json_error(read_response(sock))
    assert (status, error["error"]) == (413, "payload_too_large")


def test_a_body_shorter_than_its_content_length_is_400(gateway, closed_window):
    raw = gateway.exchange(
        request(
            "POST", "/vx11/window/open", AUTH, b"Connection: close\r\n",
            b"Content-Length: %d\r\n" % (len(b'{"target":"spawner"}') + 100),
            body=b'{"target":"spawner"}',
        ),
        half_close=True,
    )  # fmt: skip
    status, error = json_error(raw)
    assert (status, error["error"]) == (400, "bad_request")
    assert not gateway.window_is_open()


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        pytest.param(b"[" * 100_000, b"", (400, "bad_json"), id="deep-nesting"),
        pytest.param(SPAWN.replace(b"1", b"\\ud800"), b"", (422, "validation_error"),
                     id="lone-surrogate"),
        pytest.param(SPAWN.replace(b"1", b"\xe9"), b"", (400, "bad_json"), id="latin-1"),
        pytest.param(SPAWN, b"Content-Type: multipart/form-data; boundary=x\r\n",
                     (415, "unsupported_media_type"), id="multipart"),
    ],
)  # fmt: skip
def test_the_app_refusals_hold_under_gunicorn(gateway, body, content_type, expected):
    raw = gateway.exchange(
        request(
            "POST", "/vx11/spawn", AUTH, content_type, b"Connection: close\r\n",
            b"Content-Length: %d\r\n" % len(body), body=body,
        )
    )  # fmt: skip
    status, error = json_error(raw)
    assert (status, error["error"]) == expected


# --- request lines and headers: gunicorn's limits ----------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(request("GET", "/vx11/spawns?limit=" + "1" * 100_000, AUTH), 414,
                     id="100k-query"),
        pytest.param(request("GET", "/vx11/spawn/" + "a" * 5000, AUTH), 414, id="5k-path"),
        pytest.param(request("GET", "/health", *(b"X-H%d: a\r\n" % i for i in range(101))), 431,
                     id="101-headers"),
        pytest.param(request("GET", "/health", b"X-Big: " + b"a" * 9000 + b"\r\n"), 431,
                     id="9k-header"),
        pytest.param(request("GET", "/health", AUTH * 200), 431, id="200-tokens"),
    ],
)  # fmt: skip
def test_gunicorn_refuses_huge_request_lines_and_headers(gateway, data, status):
    answered, headers, _ = response(gateway.exchange(data))
    assert answered == status
    assert headers["connection"] == "close"
    assert http("GET", f"{gateway.base}/health")[0] == 200


# --- message framing: request smuggling --------------------------------------------------

SMUGGLED = request(
    "POST", "/vx11/window/open", AUTH, b"Content-Length: %d\r\n" % len(b'{"target":"spawner"}'),
    body=b'{"target":"spawner"}',
)  # fmt: skip
"""A request hidden in the body of another: it opens the spawner window if it runs."""
TERMINATOR = b"0\r\n\r\n"


def test_the_hidden_request_sent_on_its_own_opens_the_window(gateway, closed_window):
    raw = gateway.exchange(SMUGGLED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
    assert response(raw)[0] == 200, raw[:500]
    assert gateway.window_is_open()


def smuggling(*framing: bytes) -> bytes:
    body = TERMINATOR + SMUGGLED
    return request("POST", "/vx11/spawn", AUTH, *framing, body=body)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(smuggling(b"Content-Length: %d\r\n" % (len(TERMINATOR) + len(SMUGGLED)),
                               b"Transfer-Encoding: chunked\r\n"), 400, id="CL.TE"),
        pytest.param(smuggling(b"Transfer-Encoding: chunked\r\n",
                               b"Content-Length: %d\r\n" % len(TERMINATOR)), 400, id="TE.CL"),
        pytest.param(smuggling(b"Transfer-Encoding: chunked\r\n",
                               b"Transfer-Encoding: chunked\r\n"), 400, id="TE.TE"),
        pytest.param(smuggling(b"Transfer-Encoding: chunked, identity\r\n"), 400,
                     id="TE-not-last-chunked"),
        pytest.param(smuggling(b"Transfer-Encoding: xchunked\r\n"), 501, id="TE-unknown"),
        pytest.param(smuggling(b"Transfer-Encoding : chunked\r\n"), 400, id="TE-space-colon"),
        pytest.param(smuggling(b"X-Pad: a\r\n Transfer-Encoding: chunked\r\n"), 400,
                     id="TE-obs-fold"),
        pytest.param(smuggling(b"Content-Length: 5\r\n", b"Content-Length: %d\r\n" % 100), 400,
                     id="CL.CL"),
        pytest.param(smuggling(b"Content-Length: +5\r\n"), 400, id="CL-signed"),
        pytest.param(smuggling(b"Transfer-Encoding: chunked\r\n").replace(b"1.1", b"1.0", 1), 400,
                     id="chunked-HTTP/1.0"),
        pytest.param(smuggling(b"Content-Length: 5\r\n").replace(b"\r\n", b"\n", 2), 400,
                     id="bare-LF"),
    ],
)  # fmt: skip
def test_ambiguous_framing_is_refused_and_the_hidden_request_never_runs(
    gateway, closed_window, data, status
):
    raw = gateway.exchange(data)
    answered, headers, _ = response(raw)
    assert answered == status, raw[:500]
    assert headers["connection"] == "close"
    assert raw.count(b"HTTP/1.1 ") == 1, "one answer: nothing after the refusal was read"
    assert not gateway.window_is_open()
