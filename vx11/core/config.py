"""Every VX11 setting, its default and its meaning, read once from ``VX11_*`` variables.

The gateway, the workers (through ``celeryconfig``) and the CLI all build their
:class:`Settings` here, so a setting has exactly one name, one default and one parser.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import pwd
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEV_TOKEN = "vx11-test-token"


def _setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    """VX11 configuration. Each field is read from ``VX11_<FIELD NAME IN CAPITALS>``."""

    env: str = _setting(
        "development",
        "`development` accepts the built-in test token; `production` refuses it and refuses "
        "to start without a real token.",
    )
    data_dir: str = _setting(".vx11", "Directory for the SQLite ledger and the private Redis.")
    redis_url: str = _setting(
        "redis://127.0.0.1:6390/0",
        "Redis holding policy windows and token hashes; `vx11 up` starts a private one "
        "on this default address when it is left unset.",
    )
    broker_url: str = _setting("", "Celery broker; empty means the same as `redis_url`.")
    result_backend: str = _setting("", "Celery result backend; empty means `redis_url`.")
    database_url: str = _setting(
        "", "SQLAlchemy URL of the spawn ledger; empty means SQLite at `<data_dir>/vx11.db`."
    )
    dev_token: str = _setting(DEV_TOKEN, "Token accepted in development mode only.")
    window_targets: tuple[str, ...] = _setting(
        ("spawner", "switch", "hermes"), "Targets a policy window may be opened for."
    )
    window_max_ttl: int = _setting(3600, "Longest policy window, seconds.")
    window_default_ttl: int = _setting(600, "Window length when a request gives none, seconds.")
    spawn_default_ttl: int = _setting(30, "Wall-clock limit of a spawn that gives none, seconds.")
    spawn_max_ttl: int = _setting(3600, "Longest wall-clock limit a spawn may ask for, seconds.")
    spawn_queue: str = _setting("spawner", "Celery queue the spawn jobs are published to.")
    trusted_proxies: int = _setting(
        0,
        "Reverse proxies in front of the gateway that set `X-Forwarded-For` and "
        "`X-Forwarded-Proto` (werkzeug's ProxyFix, that many hops): the client's address, "
        "not the proxy's, is then what the audit log and the logs record. 0 trusts no "
        "such header; never set it where clients reach the gateway directly.",
    )
    max_body_bytes: int = _setting(
        8 << 20, "Largest request body; larger gets 413 (a spawn's files come in the body)."
    )
    max_code_bytes: int = _setting(64 << 10, "Largest `code` of a spawn, bytes (UTF-8).")
    max_stdin_bytes: int = _setting(256 << 10, "Largest `stdin` of a spawn, bytes (UTF-8).")
    max_batch: int = _setting(100, "Most spawn requests in one `POST /vx11/spawns/batch`.")
    max_artifact_bytes: int = _setting(
        4 << 20, "Bytes of artifacts a spawn keeps when it does not say (its max_artifact_bytes)."
    )
    max_artifact_bytes_max: int = _setting(
        64 << 20, "Most bytes of artifacts a spawn may ask to keep."
    )
    max_input_files: int = _setting(100, "Most `files` one spawn may be given.")
    max_input_file_bytes: int = _setting(1 << 20, "Largest file of a spawn's `files`, bytes.")
    max_input_files_bytes: int = _setting(
        4 << 20, "Most bytes a spawn's `files` may hold together (within VX11_SANDBOX_TMPFS_MB)."
    )
    max_metadata_bytes: int = _setting(4096, "Largest `metadata` object, bytes of JSON.")
    sandbox: str = _setting(
        "auto",
        "Sandbox level: `bwrap` (namespaces), `basic` (rlimits only), or `auto`: the "
        "strongest that passes a real probe when the worker starts.",
    )
    sandbox_require: str = _setting(
        "", "`bwrap` makes a worker refuse to start unless that level works (fail closed)."
    )
    sandbox_root: str = _setting(
        "", "Where basic-level working directories are made; empty means `<tmp>/vx11-sandbox`."
    )
    sandbox_uids: str = _setting(
        "60000-60999",
        "Uids (`FIRST-LAST`) a root worker runs code as: each concurrent run takes one no "
        "account names and no other process uses, its gid the same number.",
    )
    service_user: str = _setting(
        "vx11",
        "The unprivileged user (a name, or `UID[:GID]`) a worker started as root becomes, "
        "keeping only the power to run code as `VX11_SANDBOX_UIDS`; `vx11 up` started as "
        "root runs everything as it. Empty: a worker started as root stays root.",
    )
    sandbox_python: str = _setting(
        "python3", "Interpreter for python spawns, looked up on the sandbox's PATH."
    )
    task_types_file: str = _setting(
        "",
        "A TOML file declaring task types beside python, shell and bash (docs/runtimes.md); "
        "the gateway and the workers read it when they start, and refuse to start on a bad "
        "one. Empty: the built-in ones only.",
    )
    sandbox_tmpfs_mb: int = _setting(64, "Size of the working directory and of /tmp (bwrap), MiB.")
    sandbox_max_open_files: int = _setting(256, "Open file descriptors per process.")
    sandbox_cgroups: str = _setting(
        "auto",
        "Per-spawn cgroups for memory and process count: `auto` uses them when the worker "
        "can create them; `off` never does.",
    )
    # Per-spawn limits: a default a request may change, up to the maximum beside it.
    cpu_time_limit_max: int = _setting(
        3600, "Largest `cpu_time_limit` a spawn may ask for, seconds (its default: its ttl)."
    )
    memory_limit_mb: int = _setting(256, "Memory a spawn may use, MiB.")
    memory_limit_mb_max: int = _setting(2048, "Largest `memory_limit_mb` a spawn may ask for.")
    max_processes: int = _setting(64, "Processes a spawn may run at once.")
    max_processes_max: int = _setting(512, "Largest `max_processes` a spawn may ask for.")
    max_output_bytes: int = _setting(1 << 20, "Captured stdout and stderr, bytes each.")
    max_output_bytes_max: int = _setting(
        16 << 20, "Largest `max_output_bytes` a spawn may ask for."
    )
    max_file_size_mb: int = _setting(16, "Largest file a spawn may write, MiB.")
    max_file_size_mb_max: int = _setting(256, "Largest `max_file_size_mb` a spawn may ask for.")
    output_drain_limit_mb: int = _setting(
        64,
        "Output past the captured bytes is read and dropped up to this total, MiB; beyond "
        "it the spawn is killed (reason `output_limit`).",
    )
    max_args: int = _setting(64, "Most `args` a spawn may pass.")
    # Per-token limits: a token's own value (set when it is made) replaces the default.
    rate_limit_per_second: float = _setting(
        0.0,
        "Spawn and window requests (submit, cancel, open, close) a token may make per "
        "second, counted in Redis across every gateway: at most this many in any second, "
        "a fractional rate over up to 10 s (0.5: 1 in any 2 s); over it, 429 "
        "`rate_limited`. 0 means no limit (production: see docs/configuration.md).",
    )
    max_active_spawns: int = _setting(
        0,
        "Spawns a token may have QUEUED or RUNNING at once; one more is 429 "
        "`quota_exceeded`. 0 means no limit (production: see docs/configuration.md).",
    )
    probe_timeout: float = _setting(0.5, "Timeout of each dependency probe in /vx11/status, s.")
    metrics_cache_seconds: float = _setting(
        5.0,
        "How long a gateway process reuses the figures /metrics reads from the ledger, "
        "Redis, the broker and the workers, seconds; 0 reads them on every scrape.",
    )
    metrics_timeout: float = _setting(
        2.0,
        "Longest a /metrics scrape waits for the ledger, Redis and the broker, seconds; "
        "one that has not answered is left out and its `vx11_up` is 0.",
    )
    redis_timeout: float = _setting(2.0, "Socket timeout of gateway Redis calls, seconds.")
    result_expires: int = _setting(86400, "How long Celery keeps task results, seconds.")
    shutdown_grace: int = _setting(
        10,
        "Seconds a stopping worker lets its running spawns go on; then it stops them, and "
        "they end ERROR `worker_shutdown` with the output they printed so far.",
    )
    retention_days: int = _setting(
        90,
        "Days terminal spawn records and audit entries are kept: `vx11 purge` deletes "
        "older ones (run it from cron; nothing is deleted otherwise).",
    )
    # Result callbacks (vx11.core.callbacks): signed POSTs of a finished spawn's record.
    callback_secret: str = _setting(
        "",
        "HMAC-SHA256 key callbacks are signed with; empty refuses every `callback_url` "
        "(422 `callbacks_disabled`). Gateway and workers need the same value.",
    )
    callback_allowed_hosts: tuple[str, ...] = _setting(
        (),
        "Hosts a `callback_url` may name: exact names (or IP literals) and `*.domain` "
        "for any subdomain of domain; empty allows none.",
    )
    callback_allow_private: tuple[str, ...] = _setting(
        (),
        "CIDRs a callback may reach although they are private, loopback, link-local or "
        "otherwise not public (e.g. `10.1.0.0/16`); empty allows none.",
    )
    callback_max_attempts: int = _setting(6, "Deliveries tried per callback before giving up.")
    callback_timeout: float = _setting(
        5.0, "Connect and read timeout of one callback delivery, seconds."
    )
    callback_backoff_base: float = _setting(
        2.0, "Wait before the first callback retry, seconds; it doubles on each (to 10 min)."
    )
    # Logs (vx11.core.logs): the gateway's, gunicorn's and the workers' lines.
    log_format: str = _setting(
        "",
        "`json` (one object per line, with `spawn_id`, `correlation_id`, `request_id`) or "
        "`text`; empty: `json` in production, `text` in development.",
    )
    log_level: str = _setting(
        "",
        "DEBUG, INFO, WARNING, ERROR or CRITICAL; empty: INFO, or for a worker its "
        "`--loglevel` and for gunicorn's own lines its `--log-level`.",
    )

    # Flower (vx11.cli.stack): its login, HTTP basic auth.
    flower_user: str = _setting("admin", "User name of Flower's login (HTTP basic auth).")
    flower_password: str = _setting(
        "",
        "Password of Flower's login. Empty: in development `vx11 up` generates one, keeps "
        "it in `<data_dir>/flower-password` and prints it; in production it refuses to "
        "start Flower. No commas (Flower splits logins on them).",
    )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Defaults, then ``VX11_*`` variables, then ``overrides`` (the test mapping)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f"VX11_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update(overrides or {})
        return cls(**values)

    def __post_init__(self) -> None:
        if self.env not in ("development", "production"):
            raise ValueError(f"VX11_ENV must be development or production, not {self.env!r}")
        for name in ("window_targets", "callback_allowed_hosts", "callback_allow_private"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, _split(getattr(self, name)))
        if self.sandbox not in ("auto", "bwrap", "basic"):
            raise ValueError(f"VX11_SANDBOX must be auto, bwrap or basic, not {self.sandbox!r}")
        if self.sandbox_require not in ("", "bwrap"):
            raise ValueError(
                f"VX11_SANDBOX_REQUIRE may only be bwrap, not {self.sandbox_require!r}"
            )
        self.sandbox_uid_range  # noqa: B018 - raises for a malformed range
        for default, maximum in _DEFAULT_AND_MAXIMUM:
            if getattr(self, default) > getattr(self, maximum):
                raise ValueError(
                    f"VX11_{default.upper()} ({getattr(self, default)}) is above "
                    f"VX11_{maximum.upper()} ({getattr(self, maximum)})"
                )
        if "spawner" not in self.window_targets:
            raise ValueError("VX11_WINDOW_TARGETS must include 'spawner'")
        for cidr in self.callback_allow_private:
            try:
                ipaddress.ip_network(cidr)
            except ValueError as exc:
                raise ValueError(f"VX11_CALLBACK_ALLOW_PRIVATE: {exc}") from None
        if self.callback_max_attempts < 1:
            raise ValueError("VX11_CALLBACK_MAX_ATTEMPTS must be at least 1")
        if self.callback_timeout <= 0 or self.callback_backoff_base < 0:
            raise ValueError(
                "VX11_CALLBACK_TIMEOUT must be positive, the backoff base not negative"
            )
        if not math.isfinite(self.rate_limit_per_second) or self.rate_limit_per_second < 0:
            raise ValueError("VX11_RATE_LIMIT_PER_SECOND must be a number, 0 or more")
        if self.max_active_spawns < 0:
            raise ValueError("VX11_MAX_ACTIVE_SPAWNS must be 0 or more")
        if self.trusted_proxies < 0:
            raise ValueError("VX11_TRUSTED_PROXIES must be 0 or more")
        if not self.metrics_cache_seconds >= 0 or not self.metrics_timeout > 0:
            raise ValueError(
                "VX11_METRICS_CACHE_SECONDS must be 0 or more, VX11_METRICS_TIMEOUT positive"
            )
        object.__setattr__(self, "log_level", self.log_level.upper())
        if self.log_format not in ("", "json", "text"):
            raise ValueError(f"VX11_LOG_FORMAT must be json or text, not {self.log_format!r}")
        if self.log_level not in ("", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(
                f"VX11_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                f"not {self.log_level!r}"
            )
        if not self.flower_user or any(c in self.flower_user for c in ":,"):
            raise ValueError("VX11_FLOWER_USER must be a name without ':' or ','")
        if "," in self.flower_password:
            raise ValueError("VX11_FLOWER_PASSWORD may not contain ','")
        object.__setattr__(self, "data_dir", str(Path(self.data_dir).resolve()))

    def service_ids(self) -> tuple[int, int]:
        """``(uid, gid)`` of ``VX11_SERVICE_USER`` (a user name, or ``UID[:GID]``);
        :class:`ValueError` saying why it cannot be the service user."""
        user = self.service_user
        if user.replace(":", "").isdigit():
            uid_text, _, gid_text = user.partition(":")
            uid, gid = int(uid_text), int(gid_text or uid_text)
        else:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise ValueError(
                    f"VX11_SERVICE_USER {user!r} does not exist: create it (useradd "
                    f"--system --user-group {user}), or name another unprivileged user"
                ) from None
            uid, gid = entry.pw_uid, entry.pw_gid
        if uid == 0 or gid == 0:
            raise ValueError("VX11_SERVICE_USER must not be root")
        if uid in self.sandbox_uid_range or gid in self.sandbox_uid_range:
            raise ValueError(
                f"VX11_SERVICE_USER ({uid}:{gid}) is inside VX11_SANDBOX_UIDS: spawned code "
                "would share its uid"
            )
        return uid, gid

    @property
    def sandbox_uid_range(self) -> range:
        """``VX11_SANDBOX_UIDS`` (``FIRST-LAST``, or one uid) as a range."""
        first, sep, last = self.sandbox_uids.partition("-")
        try:
            uids = range(int(first), int(last if sep else first) + 1)
        except ValueError:
            uids = range(0)
        if not uids or uids.start < 1000 or uids.stop - 1 > 0xFFFFFFFE:
            raise ValueError(
                f"VX11_SANDBOX_UIDS must be FIRST-LAST, uids from 1000 up, "
                f"not {self.sandbox_uids!r}"
            )
        return uids

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def effective_log_format(self) -> str:
        return self.log_format or ("json" if self.production else "text")

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        return self.result_backend or self.redis_url

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir) / 'vx11.db'}"

    @property
    def effective_sandbox_root(self) -> str:
        return self.sandbox_root or str(Path(tempfile.gettempdir()) / "vx11-sandbox")


_DEFAULT_AND_MAXIMUM = (
    ("window_default_ttl", "window_max_ttl"),
    ("spawn_default_ttl", "spawn_max_ttl"),
    ("memory_limit_mb", "memory_limit_mb_max"),
    ("max_processes", "max_processes_max"),
    ("max_output_bytes", "max_output_bytes_max"),
    ("max_file_size_mb", "max_file_size_mb_max"),
    ("max_artifact_bytes", "max_artifact_bytes_max"),
)


def describe() -> list[tuple[str, str, str]]:
    """``(variable, default, meaning)`` for every setting, for docs/configuration.md."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        rows.append((f"VX11_{f.name.upper()}", shown, f.metadata["doc"]))
    return rows


def _split(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = type(f.default)
    try:
        if kind is tuple:
            return _split(raw)
        if kind in (int, float):
            return kind(raw)
    except ValueError:
        raise ValueError(f"VX11_{f.name.upper()} must be a {kind.__name__}, not {raw!r}") from None
    return raw
