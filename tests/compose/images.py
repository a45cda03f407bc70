"""The images the compose test runs, built on this machine from Debian's packages: no
image registry is reachable here, so compose.yaml's official images are stood in by
images of the same programs, and VX11's own image is built from the ``Dockerfile`` on a
stand-in of ``python:3.11-slim``.

- ``vx11-test/debian``: a Debian root filesystem made by ``debootstrap`` and imported.
- ``vx11-test/python``, ``vx11-test/redis``, ``vx11-test/postgres``: built on it from
  ``images/*.Dockerfile``, each tagged with a digest of what it is built from, so that
  the engine's data root caches them between runs and a change rebuilds them.
- ``vx11-test/vx11``: the working tree's ``Dockerfile``, always built (the engine's
  layer cache makes an unchanged tree cheap).

Builds run on the host network, where pip and apt reach their registries; pip there
needs this machine's certificate bundle, which only the python stand-in carries.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.compose.engine import Engine, EngineUnavailable

HERE = Path(__file__).parent / "images"
REPO = Path(__file__).parents[2]
SUITE = "bookworm"  # Python 3.11, as the official base image
MIRROR = os.environ.get("VX11_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
DEBIAN = f"vx11-test/debian:{SUITE}"


@dataclass(frozen=True)
class Images:
    """What compose.yaml's image settings are pointed at."""

    base: str
    vx11: str
    redis: str
    postgres: str


def build_all(engine: Engine, progress=print) -> Images:
    if engine.docker("image", "inspect", DEBIAN, check=False).returncode != 0:
        progress(f"compose test: making {DEBIAN} with debootstrap (once per machine)")
        _import_debian(engine)
    extras: dict[str, dict[str, Path]] = {
        "python": {"host-ca-bundle.crt": CA_BUNDLE},
        "redis": {},
        "postgres": {"postgres-entrypoint.sh": HERE / "postgres-entrypoint.sh"},
    }
    stand_ins = {name: _stand_in(engine, name, extra, progress) for name, extra in extras.items()}
    vx11 = "vx11-test/vx11:latest"
    progress(f"compose test: building {vx11} from the Dockerfile on {stand_ins['python']}")
    engine.docker(
        "build", "--network=host", f"--build-arg=BASE_IMAGE={stand_ins['python']}",
        "--tag", vx11, str(REPO), timeout=1200,
    )  # fmt: skip
    return Images(stand_ins["python"], vx11, stand_ins["redis"], stand_ins["postgres"])


def _import_debian(engine: Engine) -> None:
    if shutil.which("debootstrap") is None:
        raise EngineUnavailable("debootstrap is not installed")
    with tempfile.TemporaryDirectory(prefix="vx11-rootfs-") as root:
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, root, MIRROR],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import", "--change", 'CMD ["bash"]', "-", DEBIAN],
            stdin=tar.stdout, env=engine.env, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        if tar.wait() != 0:
            raise RuntimeError("could not archive the Debian root filesystem")


def _stand_in(engine: Engine, name: str, extra: dict[str, Path], progress) -> str:
    """``vx11-test/<name>:<digest>``, built unless the cache has it."""
    dockerfile = HERE / f"{name}.Dockerfile"
    digest = hashlib.sha256(dockerfile.read_bytes() + DEBIAN.encode())
    for file in sorted(extra):
        digest.update(extra[file].read_bytes())
    tag = f"vx11-test/{name}:{digest.hexdigest()[:12]}"
    if engine.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    progress(f"compose test: building {tag}")
    with tempfile.TemporaryDirectory(prefix="vx11-image-") as context:
        shutil.copy(dockerfile, Path(context) / "Dockerfile")
        for file, source in extra.items():
            shutil.copy(source, Path(context) / file)
        engine.docker(
            "build", "--network=host", f"--build-arg=DEBIAN={DEBIAN}", "--tag", tag, context,
            timeout=1200,
        )  # fmt: skip
    return tag
