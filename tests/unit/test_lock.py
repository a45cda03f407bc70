"""requirements.lock: one pinned version of every dependency VX11 declares (setup.cfg and
pyproject.toml, every extra), each within its declared range, and the environment the
tests run in installed at exactly those versions. scripts/lib.sh installs with
`-c requirements.lock`; ./scripts/lock updates it."""

from __future__ import annotations

import configparser
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
STALE = "requirements.lock is stale (update it: ./scripts/lock)"
UNLOCKED = (
    "this environment is not the one requirements.lock pins (install it: .venv/bin/python"
    " -m pip install -c requirements.lock -e '.[test]', as ./scripts/test does when the"
    " lock or setup.cfg has changed)"
)
# The extras the test suite runs with (ensure_venv test): each of their dependencies
# must be installed; another extra's are checked where they are installed.
INSTALLED_EXTRAS = ("", "test")


def declared() -> dict[str, list[Requirement]]:
    """Each extra's requirements ("" for the install requirements) that apply here."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")
    texts = {"": config.get("options", "install_requires", fallback="")}
    if config.has_section("options.extras_require"):
        texts.update(config["options.extras_require"])
    groups = {
        extra: [Requirement(line) for line in text.split("\n") if line.strip()]
        for extra, text in texts.items()
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("project", {})
    groups[""] += [Requirement(line) for line in project.get("dependencies", [])]
    for extra, lines in project.get("optional-dependencies", {}).items():
        groups.setdefault(extra, []).extend(Requirement(line) for line in lines)
    return {
        extra: [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": extra})]
        for extra, reqs in groups.items()
    }


def locked() -> dict[NormalizedName, Version]:
    pins: dict[NormalizedName, Version] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{raw!r}: not name==version"
        assert not req.extras, f"{raw!r}: pip takes no extras in a constraints file"
        pins[canonicalize_name(req.name)] = Version(specs[0].version)
    return pins


def test_the_lock_is_pins_of_the_dependencies_not_of_the_project():
    assert "vx11" not in locked()


def test_every_declared_requirement_is_pinned_within_its_range():
    pins = locked()
    stale = []
    for extra, reqs in declared().items():
        for req in reqs:
            pin = pins.get(canonicalize_name(req.name))
            where = f"{req} ({f'extra {extra}' if extra else 'install_requires'})"
            if pin is None:
                stale.append(f"{where}: no pin")
            elif not req.specifier.contains(pin, prereleases=True):
                stale.append(f"{where}: pinned at {pin}, outside the range")
    assert not stale, f"{STALE}:\n  " + "\n  ".join(stale)


def test_the_environment_is_the_locked_one():
    """Each declared dependency, and each of theirs down the tree (with the extras asked
    for), is installed at its locked version."""
    pins = locked()
    todo = [
        (req, "vx11", extra in INSTALLED_EXTRAS)
        for extra, reqs in declared().items()
        for req in reqs
    ]
    seen: set[tuple[NormalizedName, frozenset[str], bool]] = set()
    wrong: dict[NormalizedName, str] = {}
    while todo:
        req, parent, needed = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras), needed) in seen:
            continue
        seen.add((name, frozenset(req.extras), needed))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            dist = None
        if (dist is None and needed) or (dist and Version(dist.version) != pins.get(name)):
            installed = dist.version if dist else "not"
            wrong[name] = (
                f"{name}: {installed} installed, {pins.get(name, 'not')} locked"
                f" (required by {parent})"
            )
        if dist is None:
            continue
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(
                sub.marker.evaluate({"extra": extra}) for extra in ("", *req.extras)
            ):
                todo.append((sub, name, needed))
    assert not wrong, f"{UNLOCKED}:\n  " + "\n  ".join(sorted(wrong.values()))
