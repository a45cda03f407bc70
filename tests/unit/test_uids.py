"""Leases on the uids runs take (:mod:`workers.sandbox.uids`)."""

from __future__ import annotations

import os
import subprocess

import pytest

from workers.sandbox.spec import SandboxError
from workers.sandbox.uids import Leases


def test_concurrent_runs_get_different_uids_and_a_process_keeps_its_own(tmp_path):
    leases = Leases(tmp_path)
    uids = range(61000, 61010)
    first, second = leases.take(uids, "bwrap"), leases.take(uids, "bwrap")
    assert first != second and {first.uid, second.uid} <= set(uids)
    assert (first.uid, first.gid) == (first.uid, first.uid)
    leases.give(uids, "bwrap", first)
    assert leases.take(uids, "basic") not in (first, second)  # first stays its slot's
    assert leases.take(uids, "bwrap") == first  # the same uid for the next run: its slot


def test_a_uid_another_process_holds_is_not_taken(tmp_path):
    uids = range(61000, 61002)
    mine, theirs = Leases(tmp_path), Leases(tmp_path)  # two lock holders, as two workers
    taken = {mine.take(uids, "bwrap").uid, theirs.take(uids, "bwrap").uid}
    assert taken == set(uids)
    with pytest.raises(SandboxError, match="no free uid"):
        theirs.take(uids, "bwrap")
    mine.close()  # its process ended: its locks are gone
    assert theirs.take(uids, "bwrap").uid in uids


def test_a_uid_an_account_names_is_never_taken(tmp_path):
    assert Leases(tmp_path).take(range(65534, 65536), "basic").uid == 65535  # 65534: nobody


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a process as another uid needs root")
def test_a_uid_some_process_runs_as_is_never_taken(tmp_path):
    busy = subprocess.Popen(["sleep", "30"], user=61000, group=61000)
    try:
        assert Leases(tmp_path).take(range(61000, 61002), "basic").uid == 61001
    finally:
        busy.kill()
        busy.wait()
