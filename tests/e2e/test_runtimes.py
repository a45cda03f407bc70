"""Task types end to end: a third runtime the suite declares (perl, which every Debian
has), read by a real gateway and a real worker from ``VX11_TASK_TYPES_FILE``; listed
with the worker's version, run at both sandbox levels through the API and the CLI,
refused while no live worker offers it, and a bad file stopping both at start."""

from __future__ import annotations

import json
import shutil

import pytest
from celery import Celery

from tests.e2e.test_cli import one_error_line, vx11
from tests.support import (
    TOKEN,
    Process,
    http,
    refused_worker,
    service_env,
    start_worker,
    wait_for,
    wait_terminal,
)
from vx11.cli.stack import gunicorn_argv

pytestmark = pytest.mark.e2e

if shutil.which("perl") is None:
    pytest.skip("perl is not installed here", allow_module_level=True)

TASK_TYPES = """
[perl]
interpreter = ["perl"]
main = "main.pl"
version = ["perl", "-e", "print $^V"]
description = "Perl 5"
limits = { ttl_seconds = 12, memory_limit_mb = 96 }
"""
CODE = """
open(my $in, "<", "data.csv") or die "data.csv: $!";
my $total = 0;
while (<$in>) { my @f = split /,/; $total += $f[1] if $f[1] =~ /^\\d+$/; }
mkdir "out";
open(my $out, ">", "out/total.txt") or die; print $out "$total\\n"; close $out;
print "total $total, args @ARGV\\n";
print STDERR "done\\n";
exit 4;
"""
CSV = "name,value\na,2\nb,40\n"


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory) -> dict[str, str]:
    path = tmp_path_factory.mktemp("task-types") / "task-types.toml"
    path.write_text(TASK_TYPES)
    return {"task_types_file": str(path)}


def runtimes(stack) -> dict[str, dict]:
    status, answer = http("GET", f"{stack.base}/vx11/runtimes", headers=TOKEN)
    assert status == 200, answer
    return {runtime["name"]: runtime for runtime in answer["runtimes"]}


def test_the_declared_task_type_is_listed_with_the_workers_version(stack):
    perl = wait_for(lambda: runtimes(stack)["perl"] if runtimes(stack)["perl"]["workers"] else None)
    assert perl["version"].startswith("v5."), perl
    assert (perl["accepted"], perl["builtin"], perl["main"]) == (True, False, "main.pl")
    assert perl["limits"]["ttl_seconds"]["default"] == 12
    assert [worker.split("@")[0] for worker in perl["workers"]] == ["worker"]
    _, answer = http("GET", f"{stack.base}/vx11/status", headers=TOKEN)
    offered = next(iter(answer["task_types"].values()))
    assert offered["perl"] == perl["version"] and offered["python"].startswith("Python 3.")


def test_a_perl_spawn_runs_with_its_files_args_limits_and_artifacts(stack, worker_level):
    stack.open_window()
    wait_for(lambda: runtimes(stack)["perl"]["accepted"])
    accepted = stack.spawn(
        "perl", CODE, args=["x", "y"], files=[{"path": "data.csv", "content": CSV}],
        artifacts=["out/*"],
    )  # fmt: skip
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert (record["status"], record["exit_code"], record["sandbox"]) == (
        "FAILED", 4, worker_level,
    )  # fmt: skip
    assert (record["stdout"], record["stderr"]) == ("total 42, args x y\n", "done\n")
    assert (record["ttl_seconds"], record["limits"]["memory_limit_mb"]) == (12, 96)
    assert [a["path"] for a in record["artifacts"]] == ["out/total.txt"]


def test_the_cli_lists_runtimes_and_runs_perl_with_files_in_and_artifacts_out(stack, tmp_path):
    listed = vx11(stack, "runtimes")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("perl "))
    assert "v5." in row and " yes " in row and "perl main.pl" in row
    as_json = json.loads(vx11(stack, "runtimes", "--json").stdout)
    assert [r["name"] for r in as_json["runtimes"]] == ["python", "shell", "bash", "perl"]
    (tmp_path / "main.pl").write_text(CODE)
    (tmp_path / "data.csv").write_text(CSV)
    stack.open_window()
    done = vx11(
        stack, "spawn", "perl", "-f", "main.pl", "--file", "data.csv", "--artifact", "out/*",
        "--out", "got", "--wait", "--arg", "z", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert done.stdout == "total 42, args z\n"
    assert (tmp_path / "got" / "out" / "total.txt").read_text() == "42\n"
    unknown = vx11(stack, "spawn", "ruby", "puts 1")
    assert unknown.returncode != 0
    one_error_line(unknown, "validation_error")


def test_no_live_worker_offering_it_refuses_it_and_a_worker_that_comes_back_runs_it(
    stack, tmp_path
):
    # every worker (the stack's, or the basic level's in its place) is told to stop, and
    # withdraws its announcement as it does
    control = Celery(broker=stack.config["broker_url"])
    control.control.shutdown()
    wait_for(lambda: not runtimes(stack)["perl"]["workers"], timeout=30)
    stack.open_window()
    refused = http("POST", f"{stack.base}/vx11/spawn", {"task_type": "perl", "code": "1"}, TOKEN)
    assert refused[0] == 503 and refused[1]["error"] == "task_type_unavailable", refused
    assert runtimes(stack)["perl"]["accepted"] is False
    queued = stack.spawn("python", "print('queued')")  # a built-in one waits for a worker
    cli = vx11(stack, "spawn", "perl", "print 1")
    assert cli.returncode != 0
    one_error_line(cli, "task_type_unavailable")
    stack.worker = start_worker(stack.config, tmp_path, name="worker")
    assert wait_terminal(stack.base, queued["spawn_id"])["stdout"] == "queued\n"
    wait_for(lambda: runtimes(stack)["perl"]["accepted"])
    again = stack.spawn("perl", 'print "back\\n"')
    assert wait_terminal(stack.base, again["spawn_id"])["stdout"] == "back\n"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[perl]\ninterpreter = ["perl"]\nmain = "m.pl"\nbinds = ["/etc"]\n',
         "task type 'perl': binds: '/etc': a bind is an absolute path"),
        ('[perl]\ninterpreter = ["perl"]\nmain = "m.pl"\nbinds = ["/opt/vx11-none"]\n',
         "task type 'perl': bind /opt/vx11-none does not exist on this worker"),
        ('[awk]\ninterpreter = ["vx11-no-awk"]\nmain = "m.awk"\n',
         "task type 'awk': interpreter vx11-no-awk is not installed on this worker"),
    ],
)  # fmt: skip
def test_a_worker_does_not_start_on_a_task_type_it_cannot_run(stack, tmp_path, text, said):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    line = refused_worker({**stack.config, "task_types_file": str(path)}, tmp_path)
    assert "the worker does not start: VX11_TASK_TYPES_FILE" in line and said in line, line


def test_a_gateway_does_not_start_on_a_bad_file(stack, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[perl]\ninterpreter = ["perl"]\nmain = "../m.pl"\n')
    env = service_env({**stack.config, "task_types_file": str(path)})
    gateway = Process("bad-gateway", gunicorn_argv("127.0.0.1", 0, 1, 1), env, tmp_path).start()
    try:
        wait_for(lambda: not gateway.alive(), timeout=60)
    finally:
        gateway.stop()
    assert gateway.proc.returncode != 0
    assert "main: '../m.pl' is not a relative path" in gateway.log()
    up = vx11(stack, "up", VX11_TASK_TYPES_FILE=str(path), VX11_DATA_DIR=str(tmp_path / "d"))
    assert up.returncode == 1
    assert up.stderr.startswith("Error: bad configuration: VX11_TASK_TYPES_FILE"), up.stderr
    assert len(up.stderr.splitlines()) == 1 and not (tmp_path / "d").exists()
