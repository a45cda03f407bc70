"""The task types file (``VX11_TASK_TYPES_FILE``): what it may declare, and the clear
error, naming the file, the task type and the field, for what it may not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vx11.cli.spawns import spawn
from vx11.core.config import Settings
from vx11.core.runtimes import BUILTIN, RESERVED, TaskTypeFileError, defaults, load

PERL = """
[perl]
interpreter = ["/usr/bin/perl", "-w"]
main = "main.pl"
version = ["/usr/bin/perl", "-e", "print $^V"]
binds = ["/opt/perl", "/usr/share/perl5"]
description = "Perl 5"
limits = { ttl_seconds = 10, memory_limit_mb = 128 }
"""


def settings_with(tmp_path, text: str, **overrides) -> Settings:
    path = tmp_path / "task-types.toml"
    path.write_text(text)
    return Settings.from_env({}, {"task_types_file": str(path), **overrides})


def test_without_a_file_the_task_types_are_the_built_in_ones():
    runtimes = load(Settings.from_env({}))
    assert tuple(r.name for r in runtimes) == BUILTIN
    assert all(r.builtin for r in runtimes)


def test_a_declared_task_type_follows_the_built_in_ones_as_written(tmp_path):
    runtimes = load(settings_with(tmp_path, PERL))
    assert [r.name for r in runtimes] == [*BUILTIN, "perl"]
    perl = runtimes[-1]
    assert (perl.interpreter, perl.main, perl.binds) == (
        ("/usr/bin/perl", "-w"), "main.pl", ("/opt/perl", "/usr/share/perl5"),
    )  # fmt: skip
    assert perl.argv(["a", "b"]) == ["/usr/bin/perl", "-w", "main.pl", "a", "b"]
    assert not perl.builtin


def test_a_task_types_defaults_replace_the_servers_and_the_rest_stay(tmp_path):
    settings = settings_with(tmp_path, PERL, max_processes=20)
    perl = load(settings)[-1]
    python = load(settings)[0]
    assert defaults(perl, settings)["ttl_seconds"] == 10
    assert defaults(perl, settings)["memory_limit_mb"] == 128
    assert defaults(perl, settings)["max_processes"] == 20
    assert defaults(python, settings)["ttl_seconds"] == settings.spawn_default_ttl


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[perl]\ninterpreter = ["perl"]\nmain = "m"\nbinds = ["/etc"]', "'/etc': a bind is"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "m"\nbinds = ["/opt/../etc"]', "a bind is"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "m"\nbinds = ["/optional"]', "a bind is"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "m"\nbinds = ["opt/x"]', "a bind is"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "m"\nbinds = ["/usr/./lib"]', "a bind is"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "../m"', "main: '../m' is not a relative"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "/work/m"', "is not a relative path"),
        ('[perl]\ninterpreter = ["bin/perl"]\nmain = "m"', "interpreter: 'bin/perl'"),
        ('[perl]\ninterpreter = []\nmain = "m"', "interpreter: "),
        ('[perl]\ninterpreter = ["perl", ""]\nmain = "m"', "interpreter.1: "),
        ('[perl]\nmain = "m"', "interpreter: Missing data"),
        ('[perl]\ninterpreter = ["perl"]', "main: Missing data"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "m"\nimage = "x"', "image: Unknown field"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "m"\nlimits = {cpu = 1}', "limits.cpu.key"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "m"\nlimits = {max_processes = 9999}',
         "limits.max_processes must be between 1 and 512 (VX11_MAX_PROCESSES_MAX), not 9999"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "m"\nlimits = {ttl_seconds = 0}',
         "limits.ttl_seconds must be between 1"),
        ('[python]\ninterpreter = ["perl"]\nmain = "m"', "task type 'python': a name is"),
        ('[Perl]\ninterpreter = ["perl"]\nmain = "m"', "task type 'Perl': a name is"),
        ('[show]\ninterpreter = ["perl"]\nmain = "m"', "nor one of the CLI's `vx11 spawn`"),
        ('perl = "x"', "must be a table"),
        ("[perl\n", "not TOML"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_saying_where(tmp_path, text, says):
    settings = settings_with(tmp_path, text)
    with pytest.raises(TaskTypeFileError) as refused:
        load(settings)
    assert says in str(refused.value)
    assert str(tmp_path / "task-types.toml") in str(refused.value)


def test_every_vx11_spawn_command_is_a_built_in_task_type_or_a_reserved_name():
    """A command of its own added to ``vx11 spawn`` must be reserved too, or it would hide
    a declared task type of that name from the CLI."""
    assert set(spawn.commands) == {*BUILTIN, *RESERVED}


def test_a_missing_file_is_refused_naming_it(tmp_path):
    settings = Settings.from_env({}, {"task_types_file": str(tmp_path / "nope.toml")})
    with pytest.raises(TaskTypeFileError, match=r"nope\.toml: No such file"):
        load(settings)


def test_the_documented_example_file_is_one_vx11_takes(tmp_path):
    docs = (Path(__file__).parents[2] / "docs" / "runtimes.md").read_text()
    example = re.search(r"```toml\n(.*?)```", docs, re.S)
    assert example is not None
    runtimes = load(settings_with(tmp_path, example.group(1)))
    perl, awk = runtimes[-2:]
    assert perl.argv(["x"]) == ["perl", "main.pl", "x"]
    assert awk.argv(["x"]) == ["awk", "-f", "main.awk", "x"]
    assert dict(perl.limits) == {"ttl_seconds": 10, "memory_limit_mb": 128}
