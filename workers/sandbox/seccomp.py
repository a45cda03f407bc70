"""The system-call filter of every spawn at the bwrap level, made with libseccomp
(through ``pyseccomp``) and loaded by each run's init after it has dropped its
capabilities, so that everything the run starts inherits it (:mod:`.launcher`).

A deny-list: what Docker's default profile refuses to a container without
capabilities, what ioi/isolate refuses because it crosses from one sandbox to another,
and the watches that would see another spawn's use of a shared file. Each denied call
answers an error (``EPERM``, ``ENOSYS`` or ``EAFNOSUPPORT``), never a kill, so that a
program says what it could not do. System calls of another ABI (32-bit x86, x32) answer
``ENOSYS``: the filter knows the native ABI only. docs/security.md lists every entry.

POSIX record locks are the exception: taken on a shared inode that anyone may open for
writing (``/dev/null``, bound into every sandbox), one run's lock is seen by another.
Refusing them would break ``sqlite3`` (it locks every database it reads), so they
succeed without locking anything: a run cannot share an inode's lock state with any
other, and its own processes cannot exclude one another through record locks.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import tempfile
from typing import Any

from workers.sandbox.spec import SandboxError

EPERM, ENOSYS = errno.EPERM, errno.ENOSYS

DENIED: dict[str, tuple[int, str]] = {
    # Shared between sandboxes: kernel keyrings are per uid and not namespaced
    "keyctl": (ENOSYS, "kernel keyrings are not namespaced: a channel between spawns"),
    "add_key": (ENOSYS, "kernel keyrings are not namespaced: a channel between spawns"),
    "request_key": (ENOSYS, "kernel keyrings are not namespaced: a channel between spawns"),
    "flock": (ENOSYS, "a lock on a shared read-only file is seen by every other spawn"),
    "inotify_init": (ENOSYS, "a watch on a shared file sees other spawns open and read it"),
    "inotify_init1": (ENOSYS, "a watch on a shared file sees other spawns open and read it"),
    "fanotify_init": (EPERM, "a watch on a shared file sees other spawns open and read it"),
    # Kernel attack surface no spawn needs (Docker's default profile refuses them too)
    "io_uring_setup": (ENOSYS, "io_uring: its operations bypass this filter"),
    "io_uring_enter": (ENOSYS, "io_uring: its operations bypass this filter"),
    "io_uring_register": (ENOSYS, "io_uring: its operations bypass this filter"),
    "bpf": (EPERM, "loads programs into the kernel"),
    "perf_event_open": (EPERM, "performance counters: a side channel on the host"),
    "userfaultfd": (EPERM, "stalls the kernel at will, the usual step of a kernel exploit"),
    "ptrace": (EPERM, "reads and rewrites other processes"),
    "process_vm_readv": (EPERM, "reads other processes' memory"),
    "process_vm_writev": (EPERM, "writes other processes' memory"),
    "kcmp": (EPERM, "compares kernel objects of other processes"),
    "lookup_dcookie": (EPERM, "kernel profiling"),
    "name_to_handle_at": (EPERM, "file handles reach files outside the mounts"),
    "open_by_handle_at": (EPERM, "file handles reach files outside the mounts"),
    "get_mempolicy": (EPERM, "NUMA policy of the host"),
    "set_mempolicy": (EPERM, "NUMA policy of the host"),
    "mbind": (EPERM, "NUMA policy of the host"),
    "move_pages": (EPERM, "NUMA policy of the host"),
    "migrate_pages": (EPERM, "NUMA policy of the host"),
    # The sandbox's layout and namespaces stay as the launcher made them
    "mount": (EPERM, "changes the sandbox's filesystem"),
    "umount2": (EPERM, "changes the sandbox's filesystem"),
    "pivot_root": (EPERM, "changes the sandbox's filesystem"),
    "chroot": (EPERM, "changes the sandbox's filesystem"),
    "open_tree": (EPERM, "changes the sandbox's filesystem"),
    "move_mount": (EPERM, "changes the sandbox's filesystem"),
    "fsopen": (EPERM, "changes the sandbox's filesystem"),
    "fsconfig": (EPERM, "changes the sandbox's filesystem"),
    "fsmount": (EPERM, "changes the sandbox's filesystem"),
    "fspick": (EPERM, "changes the sandbox's filesystem"),
    "mount_setattr": (EPERM, "changes the sandbox's filesystem"),
    "unshare": (EPERM, "new namespaces"),
    "setns": (EPERM, "enters other namespaces"),
    # The host's own settings (refused without capabilities anyway; refused here first)
    "reboot": (EPERM, "the host"),
    "kexec_load": (EPERM, "the host's kernel"),
    "kexec_file_load": (EPERM, "the host's kernel"),
    "init_module": (EPERM, "the host's kernel"),
    "finit_module": (EPERM, "the host's kernel"),
    "delete_module": (EPERM, "the host's kernel"),
    "swapon": (EPERM, "the host's memory"),
    "swapoff": (EPERM, "the host's memory"),
    "acct": (EPERM, "the host's process accounting"),
    "quotactl": (EPERM, "the host's disk quotas"),
    "quotactl_fd": (EPERM, "the host's disk quotas"),
    "settimeofday": (EPERM, "the host's clock"),
    "clock_settime": (EPERM, "the host's clock"),
    "clock_adjtime": (EPERM, "the host's clock"),
    "adjtimex": (EPERM, "the host's clock"),
    "syslog": (EPERM, "the kernel's log"),
    "iopl": (EPERM, "hardware I/O ports"),
    "ioperm": (EPERM, "hardware I/O ports"),
    "uselib": (EPERM, "obsolete"),
    "ustat": (EPERM, "obsolete"),
    "sysfs": (EPERM, "obsolete"),
    "_sysctl": (EPERM, "obsolete"),
    "vhangup": (EPERM, "the host's terminals"),
}

PERSONALITY_FLAGS = {
    0x0040000: "ADDR_NO_RANDOMIZE: turns the address-layout randomisation off",
    0x0100000: "MMAP_PAGE_ZERO: maps page 0, turning null dereferences into exploits",
    0x0200000: "ADDR_COMPAT_LAYOUT: the legacy, less random, address layout",
    0x0400000: "READ_IMPLIES_EXEC: makes every readable mapping executable",
}
"""``personality`` with any of these flags answers ``EPERM``; the rest (the query,
``0xffffffff``, told apart by its bit 31, which no personality uses; ``UNAME26``;
``PER_LINUX32``) works as before."""
QUERY_BIT = 0x80000000

FCNTL_DENIED = {
    fcntl.F_SETLEASE: (EPERM, "a lease on a shared file sees other spawns open it"),
    fcntl.F_NOTIFY: (EPERM, "directory notifications see other spawns' use of shared ones"),
}
FCNTL_LOCKS = (fcntl.F_SETLK, fcntl.F_SETLKW, fcntl.F_OFD_SETLK, fcntl.F_OFD_SETLKW)
"""Record locks: they succeed and lock nothing (see the module's docstring)."""

SOCKETS_DENIED = {
    socket.AF_VSOCK: "virtual-machine sockets are not namespaced: a channel between spawns",
}


def build() -> Any:
    """The filter (a ``pyseccomp.SyscallFilter``), for the native ABI only. pyseccomp
    loads libseccomp when it is imported, so a missing library is an error here."""
    import pyseccomp as seccomp

    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    rules.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.ERRNO(ENOSYS))
    rules.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)  # a binary tree of system calls, not a list
    for name, (error, _why) in DENIED.items():
        try:
            rules.add_rule(seccomp.ERRNO(error), name)
        except (RuntimeError, ValueError):  # not a system call of this architecture
            continue
    for flag in PERSONALITY_FLAGS:
        rules.add_rule(seccomp.ERRNO(EPERM), "personality",
                       seccomp.Arg(0, seccomp.MASKED_EQ, flag | QUERY_BIT, flag))  # fmt: skip
    for command, (error, _why) in FCNTL_DENIED.items():
        rules.add_rule(seccomp.ERRNO(error), "fcntl", _int_equal(seccomp, 1, command))
    for command in FCNTL_LOCKS:
        rules.add_rule(seccomp.ERRNO(0), "fcntl", _int_equal(seccomp, 1, command))
    for family in SOCKETS_DENIED:
        rules.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", _int_equal(seccomp, 0, family))
    return rules


BUBBLEWRAP_NEEDS = frozenset(
    {"mount", "umount2", "pivot_root", "chroot", "unshare"}
    | {"fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr"}
)
"""What a worker container must allow for bubblewrap and the launcher to build each
sandbox (and ``clone`` with namespace flags, which the spawns' filter leaves alone).
Newer bubblewrap releases use the file-descriptor mount API where the kernel has it."""
SPAWNS_ONLY = frozenset({"flock", "inotify_init", "inotify_init1", "fanotify_init"})
"""Refused to spawns because other spawns share the files; the worker may use them."""


def container_profile() -> dict[str, Any]:
    """The worker container's seccomp profile for Docker (``worker-seccomp.json``
    beside compose.yaml, which tests/unit/test_worker_seccomp.py keeps current): this
    module's refusals less what bubblewrap needs and what only concerns spawns, each
    answering the same error; every other call is allowed, including ``clone`` and
    ``unshare`` with namespace flags, which Docker's default profile refuses to a
    container without ``CAP_SYS_ADMIN`` and bubblewrap cannot do without."""
    by_error: dict[int, list[str]] = {}
    for name, (error, _why) in DENIED.items():
        if name not in BUBBLEWRAP_NEEDS | SPAWNS_ONLY:
            by_error.setdefault(error, []).append(name)
    syscalls: list[dict[str, Any]] = [
        {"names": sorted(names), "action": "SCMP_ACT_ERRNO", "errnoRet": error}
        for error, names in sorted(by_error.items())
    ]
    syscalls += [
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
         "args": [{"index": 0, "value": flag | QUERY_BIT, "valueTwo": flag,
                   "op": "SCMP_CMP_MASKED_EQ"}]}
        for flag in PERSONALITY_FLAGS
    ]  # fmt: skip
    syscalls += [
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EAFNOSUPPORT,
         "args": [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}]}
        for family in SOCKETS_DENIED
    ]  # fmt: skip
    # No architectures listed: the native one only, so 32-bit calls are refused too.
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls}


def _int_equal(seccomp: Any, arg: int, value: int) -> Any:
    """Argument ``arg`` (a C ``int``) equals ``value``: its low 32 bits only, as the
    kernel reads it, so that high bits set by hand do not slip past the rule."""
    return seccomp.Arg(arg, seccomp.MASKED_EQ, 0xFFFFFFFF, value)


@functools.cache
def program() -> bytes:
    """The filter as the BPF program the kernel loads (``struct sock_filter`` array)."""
    try:
        rules = build()
        with tempfile.TemporaryFile() as out:
            rules.export_bpf(out)
            out.seek(0)
            return out.read()
    except (ImportError, OSError, RuntimeError, ValueError) as exc:  # libseccomp missing
        raise SandboxError(f"cannot build the system-call filter with libseccomp: {exc}") from exc


def program_fd() -> int:
    """A sealed memfd holding :func:`program`, for a launcher to read at its start."""
    fd = os.memfd_create("vx11-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, program())
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
