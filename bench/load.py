"""Load generators for the accept figure: ``wrk`` when it is installed, else a Python
client of threads with keep-alive ``http.client`` connections. Both keep a fixed number
of connections busy for a fixed time and report completed requests per second."""

from __future__ import annotations

import http.client
import json
import math
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\\"requests\\": %d, \\"duration_us\\": %d, \\"status\\": %d, \\"other\\": %d}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True)
class Request:
    """One request, sent again and again."""

    method: str
    url: str
    body: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def __add__(self, other: LoadResult) -> LoadResult:
        return LoadResult(
            self.requests + other.requests, self.seconds + other.seconds, self.errors + other.errors
        )


class Wrk:
    """``wrk`` with a generated Lua script (method, body, headers, a parseable summary)."""

    name = "wrk"

    def __init__(self, workdir: Path, threads: int = 2) -> None:
        self.workdir = workdir
        self.threads = threads

    @staticmethod
    def available() -> bool:
        return shutil.which("wrk") is not None

    def run(self, request: Request, connections: int, seconds: float) -> LoadResult:
        lines = [f"wrk.method = {json.dumps(request.method)}"]
        if request.body is not None:
            lines.append(f"wrk.body = {json.dumps(request.body)}")  # a valid Lua string too
        for name, value in request.headers:
            lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
        script = self.workdir / "wrk.lua"
        script.write_text("\n".join(lines) + "\n" + WRK_REPORT)
        argv = [
            "wrk",
            f"--threads={min(self.threads, connections)}",
            f"--connections={connections}",
            f"--duration={max(1, math.ceil(seconds))}s",  # wrk counts whole seconds
            "--timeout=10s",
            f"--script={script}",
            request.url,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            if line.startswith("BENCH "):
                report = json.loads(line[len("BENCH ") :])
                # wrk counts non-2xx answers as requests too: only successes count here
                return LoadResult(
                    report["requests"] - report["status"],
                    report["duration_us"] / 1e6,
                    report["status"] + report["other"],
                )
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")


class PythonLoad:
    """A thread per connection, each sending ``request`` back to back on one keep-alive
    ``http.client`` connection. The client shares the GIL, so it saturates sooner than
    ``wrk``: figures from it are lower bounds."""

    name = "python (threads + http.client keep-alive)"

    def run(self, request: Request, connections: int, seconds: float) -> LoadResult:
        parts = urlsplit(request.url)
        body = request.body.encode() if request.body is not None else None
        headers = dict(request.headers)
        counts = [[0, 0] for _ in range(connections)]
        started = time.perf_counter()
        deadline = started + seconds

        def drive(count: list[int]) -> None:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            try:
                while time.perf_counter() < deadline:
                    try:
                        conn.request(request.method, parts.path, body=body, headers=headers)
                        response = conn.getresponse()
                        response.read()
                    except (OSError, http.client.HTTPException):
                        count[1] += 1
                        conn.close()
                        continue
                    count[0 if response.status == 200 else 1] += 1
            finally:
                conn.close()

        threads = [threading.Thread(target=drive, args=(count,)) for count in counts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        return LoadResult(sum(c[0] for c in counts), elapsed, sum(c[1] for c in counts))


def load_generator(choice: str, workdir: Path) -> Wrk | PythonLoad:
    """``wrk`` if asked for or (``auto``) installed, else the Python client."""
    if choice == "wrk" or (choice == "auto" and Wrk.available()):
        if not Wrk.available():
            raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
        return Wrk(workdir)
    return PythonLoad()
