"""A declared task type, for real: checked on the worker's host when it starts (its
interpreter there and inside what the sandbox shows, its binds leading under /usr or
/opt and to none of VX11's own files), then run at both levels like a built-in one:
its code in its file, its args, files and exit status; its binds read-only."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from vx11.core.runtimes import Runtime, TaskTypeFileError
from workers.sandbox import Limits, run_sandboxed, slot
from workers.sandbox.levels import offered
from workers.sandbox.runtimes import checked, private_paths, version

pytestmark = pytest.mark.serial  # runs as the sandbox's uids

LIMITS = Limits(
    wall_time=10, cpu_time=10, memory_mb=256, max_processes=16, max_file_size_mb=1,
    output_bytes=64 << 10,
)  # fmt: skip
PERL = Runtime("perl", ("perl",), "main.pl", version=("perl", "-e", "print $^V"))


@pytest.fixture(scope="module")
def opt_tree() -> Path:
    """A directory of its own under /opt, holding one file (skipped where /opt is not
    writable: a bind must be under /usr or /opt)."""
    if not os.access("/opt", os.W_OK):
        pytest.skip("/opt is not writable here: no bind of a test's own can be made")
    tree = Path("/opt") / f"vx11-test-{uuid.uuid4().hex[:8]}"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "greeting.txt").write_text("hello from /opt\n")
    tree.chmod(0o755)
    (tree / "lib").chmod(0o755)
    (tree / "lib" / "greeting.txt").chmod(0o644)
    yield tree
    shutil.rmtree(tree, ignore_errors=True)


@pytest.fixture
def with_perl(level_config):
    config = replace(level_config, runtimes=(checked(PERL),))
    yield config
    slot.SLOTS.close()  # a slot shows its config's binds: none kept for other tests


def test_the_interpreter_is_found_on_the_sandboxs_path_its_links_resolved():
    perl = os.path.realpath(shutil.which("perl", path="/usr/bin:/bin") or "perl")
    assert checked(PERL).interpreter == (perl,)


def test_an_interpreter_behind_the_hosts_alternatives_runs_at_both_levels(level_config):
    """``awk`` is a link through ``/etc/alternatives``, which the sandbox has not."""
    awk = Runtime("awk", ("awk", "-f"), "main.awk")
    config = replace(level_config, runtimes=(checked(awk),))
    code = 'BEGIN { print "awk", ARGV[1] }'
    try:
        outcome = run_sandboxed("awk", code, limits=LIMITS, config=config, args=["a1"])
    finally:
        slot.SLOTS.close()
    assert (outcome.exit_code, outcome.stdout) == (0, "awk a1\n"), outcome


def test_a_declared_task_types_code_runs_from_its_file_with_args_and_files(with_perl):
    code = (
        'open(my $f, "<", "data.txt") or die; print "$0 @ARGV ", <$f>; print STDERR "e\\n"; exit 3'
    )
    outcome = run_sandboxed(
        "perl", code, limits=LIMITS, config=with_perl, args=["a", "b"],
        files=[("data.txt", b"from a file\n")],
    )  # fmt: skip
    assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (
        3, "main.pl a b from a file\n", "e\n",
    )  # fmt: skip
    assert outcome.level == with_perl.level


def test_a_declared_task_types_code_file_is_the_runs_own(with_perl):
    code = 'my @s = stat("main.pl"); printf "%o %d\\n", $s[2] & 0777, $s[4] == $<;'
    outcome = run_sandboxed("perl", code, limits=LIMITS, config=with_perl)
    assert outcome.stdout == "600 1\n", outcome


def test_a_task_type_the_worker_was_not_given_does_not_run(level_config):
    with pytest.raises(Exception, match="does not offer task type 'perl'"):
        run_sandboxed("perl", "print 1", limits=LIMITS, config=level_config)


def test_the_worker_offers_the_built_in_and_declared_task_types_with_versions(with_perl):
    task_types = offered(with_perl)
    assert task_types["python"].startswith("Python 3.")
    assert task_types["shell"] == os.path.basename(os.path.realpath("/bin/sh"))
    assert task_types["perl"].startswith("v5.")
    assert ("bash" in task_types) == bool(shutil.which("bash", path="/usr/bin:/bin"))


def test_a_bind_is_shown_read_only_at_the_bwrap_level(bwrap_config, opt_tree):
    with_bind = replace(PERL, binds=(str(opt_tree),))
    config = replace(bwrap_config, runtimes=(checked(with_bind),))
    read = f'open(my $f, "<", "{opt_tree}/lib/greeting.txt") or die "$!"; print <$f>;'
    write = f'open(my $f, ">", "{opt_tree}/lib/x") or die "$!\\n";'
    try:
        assert run_sandboxed("perl", read, limits=LIMITS, config=config).stdout == (
            "hello from /opt\n"
        )
        refused = run_sandboxed("perl", write, limits=LIMITS, config=config)
        assert (refused.exit_code, refused.stderr) == (30, "Read-only file system\n")
        without = replace(bwrap_config, runtimes=(checked(PERL),))
        unbound = run_sandboxed("perl", read, limits=LIMITS, config=without)
        assert "No such file or directory" in unbound.stderr  # another sandbox: no bind
    finally:
        slot.SLOTS.close()


# --- what the worker's host refuses ---------------------------------------------------------


def test_a_bind_that_leads_out_of_usr_and_opt_is_refused(opt_tree):
    link = opt_tree / "etc-link"
    link.symlink_to("/etc")
    try:
        with pytest.raises(TaskTypeFileError, match=f"bind {link} leads to /etc, outside"):
            checked(replace(PERL, binds=(str(link),)))
    finally:
        link.unlink()


def test_a_bind_that_does_not_exist_is_refused():
    with pytest.raises(TaskTypeFileError, match="bind /opt/vx11-no-such does not exist"):
        checked(replace(PERL, binds=("/opt/vx11-no-such",)))


def test_a_bind_that_holds_vx11s_own_files_is_refused(opt_tree):
    data = opt_tree / "lib" / "data"
    data.mkdir()
    try:
        with pytest.raises(TaskTypeFileError, match="VX11's own files"):
            checked(replace(PERL, binds=(str(opt_tree),)), private_paths(str(data)))
    finally:
        data.rmdir()


def test_an_interpreter_that_is_not_installed_is_refused():
    with pytest.raises(TaskTypeFileError, match="interpreter vx11-no-such is not installed"):
        checked(replace(PERL, interpreter=("vx11-no-such",)))


def test_an_interpreter_the_sandbox_would_not_show_is_refused(tmp_path):
    program = tmp_path / "interpreter"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    with pytest.raises(TaskTypeFileError, match="outside what the sandbox shows"):
        checked(replace(PERL, interpreter=(str(program),)))


def test_a_version_command_that_fails_in_the_sandbox_is_refused(level_config):
    failing = replace(
        level_config, runtimes=(checked(replace(PERL, version=("perl", "-e", "exit 2"))),)
    )
    with pytest.raises(
        TaskTypeFileError,
        match=rf"'perl': in the sandbox \({level_config.level} level\): .*exited 2",
    ):
        offered(failing)


def test_a_version_command_is_taken_at_its_real_path_and_runs_in_the_sandbox(level_config):
    """``awk`` is a link through ``/etc/alternatives``, which the sandbox has not: its
    version command runs there only at the link's end."""
    awk = checked(Runtime("awk", ("awk", "-f"), "main.awk", version=("awk", "--version")))
    assert awk.version == (os.path.realpath(shutil.which("awk") or "awk"), "--version")
    task_types = offered(replace(level_config, runtimes=(awk,)))
    assert task_types["awk"] == version(awk.version)  # what the host prints, too


def test_an_interpreter_that_needs_a_file_the_sandbox_does_not_show_is_refused(
    bwrap_config, opt_tree, tmp_path
):
    """The host's checks pass (the interpreter is under /opt, bound) and so does its
    version on the host, but inside the sandbox the file it reads is not there."""
    (tmp_path / "version.txt").write_text("tool 1.0\n")
    tmp_path.chmod(0o755)
    (tmp_path / "version.txt").chmod(0o644)
    tool = opt_tree / "bin" / "tool"
    tool.parent.mkdir(exist_ok=True)
    tool.write_text(f"#!/bin/sh\nexec cat {tmp_path}/version.txt\n")
    tool.chmod(0o755)
    tool.parent.chmod(0o755)
    runtime = checked(Runtime("tool", (str(tool),), "main.t", binds=(str(opt_tree),),
                              version=(str(tool), "--version")))  # fmt: skip
    assert version(runtime.version) == "tool 1.0"
    with pytest.raises(
        TaskTypeFileError, match=r"'tool': in the sandbox \(bwrap level\): .*No such file"
    ):
        offered(replace(bwrap_config, runtimes=(runtime,)))
