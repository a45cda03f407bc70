"""The launcher: the program a slot's bubblewrap runs, started once and reused by every
run of that slot (:mod:`.slot` starts it and talks to it).

It is run as ``python3 -I -u -c <this file> CONTROL_FD TMPFS_BYTES`` and imports only
the standard library: nothing of the worker, no secret, no code or data of any spawn.
It keeps the next run prepared before its request arrives. To prepare one it forks:

- ``A``, in the launcher's namespaces, which makes new user, mount, pid and ipc
  namespaces (the run's uid is 65534 in its own user namespace, and may make no
  further one), mounts fresh size-capped tmpfs on ``/work``, ``/tmp`` and ``/dev/shm``,
  forks ``B``, tells the launcher its pid and exits;
- ``B``, the init (pid 1) of the run's pid namespace, which mounts the run's ``/proc``
  and waits.

When the worker sends a run over the control socket (its limits and its file
descriptors: a reply socket, stdin, stdout, stderr, and a memory file holding the code
and its arguments), the launcher sends the worker a pidfd of ``B`` and hands ``B`` the
run; it prepares the next one once ``B`` has exited. ``B`` (which dropped every
capability while it waited) reads the code and starts ``C``, the run: ``posix_spawn``
of the command, or a fork that runs python code right there, in an interpreter that is
already started (``python3 -I -u``), so a python spawn costs a fork instead of an
interpreter start. When ``C`` has exited ``B`` kills what is
left in its namespace and reports ``C``'s wait status and the CPU time and peak memory
of the whole run.

Nothing of the code ever enters the launcher's memory: ``B`` reads it from the memory
file in the run's own namespaces. Runs of one launcher never overlap (a slot runs one
spawn at a time), and a prepared ``B`` has never been seen by any earlier run.
"""

import sys

STARTUP_MODULES = frozenset(sys.modules)  # first: what `python3 -I -u` itself imported

import array  # noqa: E402 - after STARTUP_MODULES, on purpose
import binascii  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

CONTROL_FD = int(sys.argv[1]) if len(sys.argv) > 1 else 3
"""The launcher's end of its control socket, passed by the worker."""
FILTER_FD = int(sys.argv[3]) if len(sys.argv) > 3 else -1
"""A memfd with the runs' system-call filter, a BPF program libseccomp made in the
worker (:mod:`workers.sandbox.seccomp`); read once, at the start."""
RUN_UID = 65534
"""The uid of the launcher in its bubblewrap, and of each run in its own namespace."""
WORKDIR = "/work"
SCRIPT = WORKDIR + "/main.py"
FD_NAMES = ("reply", "stdin", "stdout", "stderr", "program")
PREPARE_TRIES = 10
SPAWN_MIN_ADDRESS_SPACE = 128 << 20
"""The least address space the init keeps to finish a run once it has taken the run's
rlimits itself (it then starts the command by ``posix_spawn``)."""

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PROC_MASKED_FILES = (
    "kallsyms", "modules", "keys", "key-users", "interrupts", "softirqs", "sched_debug",
    "timer_list", "latency_stats", "kcore",
)  # fmt: skip
PROC_MASKED_DIRS = ("acpi", "asound", "bus", "driver", "fs", "irq", "scsi", "tty")
"""What a run's ``/proc`` hides of the host's kernel, as Docker's masked paths do and
more: files read as empty (``/dev/null`` over them), directories as empty read-only
tmpfs (docs/security.md, "What /proc shows")."""
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


FILTER: tuple[ctypes.Array[ctypes.c_char], _SockFprog] | None = None
"""The filter's instructions and the ``struct sock_fprog`` that points at them."""


def read_filter() -> None:
    global FILTER
    if FILTER_FD < 0:
        return
    with os.fdopen(FILTER_FD, "rb") as source:
        program = source.read()
    instructions = ctypes.create_string_buffer(program, len(program))
    FILTER = (instructions, _SockFprog(len(program) // 8, ctypes.addressof(instructions)))


def load_filter() -> None:
    """Every process of the run inherits it; ``no_new_privs`` is set already."""
    if FILTER is not None:
        _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(FILTER[1]), 0, 0))


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        libc.mount(
            source and source.encode(),
            target.encode(),
            fstype and fstype.encode(),
            ctypes.c_ulong(flags),
            data and data.encode(),
        )
    )


def mask_proc() -> None:
    for name in PROC_MASKED_FILES:
        if os.path.isfile(f"/proc/{name}"):
            mount("/dev/null", f"/proc/{name}", None, MS_BIND)
    for name in PROC_MASKED_DIRS:
        if os.path.isdir(f"/proc/{name}"):
            flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
            mount("tmpfs", f"/proc/{name}", "tmpfs", flags, "size=0,mode=0555")


def write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


with open("/proc/sys/kernel/cap_last_cap") as _f:
    CAP_LAST_CAP = int(_f.read())


def drop_capabilities() -> None:
    """No capability now, none in the bounding set, none through exec ever again."""
    for cap in range(CAP_LAST_CAP + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    _check(libc.capset(ctypes.byref(_CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), (_CapData * 2)()))


def receive(sock: socket.socket) -> tuple[dict[str, Any], dict[str, int]] | None:
    """One request: its header and its file descriptors (by name); None at EOF."""
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(
        65536, socket.CMSG_SPACE(len(FD_NAMES) * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(data), dict(zip(FD_NAMES, fds, strict=True))


def reply(fd: int, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.sendmsg(
            [json.dumps(message).encode()],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else [],
        )
    finally:
        sock.close()


# --- A: the run's namespaces ------------------------------------------------------------


def prepare(tmpfs_bytes: int) -> tuple[int, socket.socket]:
    """In the launcher: the next run's namespaces and filesystems, made before its
    request arrives. Returns the pid of its init (``B``, waiting for the run) and the
    socket that hands it the run."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        make_namespaces(tmpfs_bytes, theirs)
    theirs.close()
    try:
        message = json.loads(ours.recv(4096) or b'{"error": "A died"}')
    finally:
        os.waitpid(pid, 0)  # A is done: it must not hold a pid of the slot any longer
    if "error" in message:
        ours.close()
        raise OSError(f"could not prepare a run: {message['error']}")
    return message["init"], ours


def make_namespaces(tmpfs_bytes: int, channel: socket.socket) -> NoReturn:
    """In ``A``: the run's namespaces and filesystems, then ``B``; never returns."""
    step = "start"
    try:
        os.close(CONTROL_FD)
        step = "oom_score_adj"
        write_file("/proc/self/oom_score_adj", "1000")  # the run goes first on an OOM
        step = "unshare"
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC))
        step = "uid map"
        write_file("/proc/self/setgroups", "deny")
        write_file("/proc/self/uid_map", f"{RUN_UID} {RUN_UID} 1")
        write_file("/proc/self/gid_map", f"{RUN_UID} {RUN_UID} 1")
        step = "no user namespaces"
        write_file("/proc/sys/user/max_user_namespaces", "0")
        step = "mounts"
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        for path in (WORKDIR, "/tmp", "/dev/shm"):
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_bytes},mode=0755")
        step = "fork"
        pid = os.fork()
        if pid == 0:
            wait_for_run(channel)
        channel.send(json.dumps({"init": pid}).encode())
    except BaseException as exc:
        try:
            channel.send(json.dumps({"error": f"{step}: {type(exc).__name__}: {exc}"}).encode())
        finally:
            os._exit(1)
    os._exit(0)


# --- B: the init of the run's pid namespace ---------------------------------------------


def wait_for_run(channel: socket.socket) -> NoReturn:
    """In ``B``, prepared: its ``/proc``, no capability, in ``/work``; then the run when
    the launcher hands it over (or nothing, if the launcher is gone first)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1: ignores what it does not handle
        set_command_line(["vx11-sandbox-init"], title=True)
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mask_proc()
        drop_capabilities()  # nothing below needs one, and the run inherits none
        load_filter()
        os.chdir(WORKDIR)
        os.umask(0o077)
        got = receive(channel)
    except BaseException:
        os._exit(1)
    if got is None:
        os._exit(0)
    init(*got)  # the channel stays open: the launcher sees it close when this exits


def init(request: dict[str, Any], fds: dict[str, int]) -> NoReturn:
    """In ``B``, given its run: ``C``, then the run's end; never returns."""
    status = None
    try:
        what = program(fds["program"])
        write_files(what.get("files", ()))
        if request["task_type"] == "python":
            write_script(what["code"])
        child = start(request, what, fds)
        for name in ("stdin", "stdout", "stderr", "program"):
            os.close(fds[name])
        while status is None:
            pid, wait_status = os.wait()
            if pid == child:
                status = wait_status
        with contextlib.suppress(ProcessLookupError):  # none left: ESRCH
            os.kill(-1, signal.SIGKILL)  # whatever the run left behind in its namespace
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        reply(
            fds["reply"],
            {
                "status": status,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "max_rss_kb": usage.ru_maxrss,
            },
        )
        if request.get("hold"):  # the worker reads the run's files through this process
            while os.read(fds["reply"], 1):
                pass  # until the worker closes its end
    except BaseException as exc:
        with contextlib.suppress(OSError):
            reply(fds["reply"], {"error": f"{type(exc).__name__}: {exc}"})
    os._exit(0)


def start(request: dict[str, Any], what: dict[str, Any], fds: dict[str, int]) -> int:
    """Start ``C``; return its pid. A command is started by ``posix_spawn`` (a vfork,
    not a copy of this interpreter) once this process has taken the run's rlimits,
    which it does when they leave it room to finish (:data:`SPAWN_MIN_ADDRESS_SPACE`);
    python code, and runs with less room, get a fork that takes them itself."""
    rlimits = request["rlimits"]
    address_space = min(
        (soft for kind, soft, _ in rlimits if kind == resource.RLIMIT_AS),
        default=resource.RLIM_INFINITY,
    )
    warm = bool(request["task_type"] == "python" and request.get("warm"))
    if warm or 0 <= address_space < SPAWN_MIN_ADDRESS_SPACE:
        child = os.fork()
        if child == 0:
            run(rlimits, what, fds, warm=warm)
        return child
    set_rlimits(rlimits)
    argv = what["argv"]
    return os.posix_spawn(
        argv[0],
        argv,
        ENVIRONMENT,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, fds["stdin"], 0),
            (os.POSIX_SPAWN_DUP2, fds["stdout"], 1),
            (os.POSIX_SPAWN_DUP2, fds["stderr"], 2),
        ],
        setsid=True,
        setsigmask=(),
        setsigdef=(signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ),
    )


def set_rlimits(rlimits: list[list[int]]) -> None:
    for kind, soft, hard in rlimits:
        resource.setrlimit(kind, (soft, hard))


def write_files(files: list[list[str]]) -> None:
    """The spawn's files, ``[path, base64]``, under ``/work`` (this process's directory,
    a fresh tmpfs): directories 0700, files 0600, owned by the run's user."""
    for path, data in files:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, binascii.a2b_base64(data))
        except OSError as exc:
            raise OSError(exc.errno, f"writing the file {path}: {exc.strerror}") from None
        finally:
            os.close(fd)


def write_script(source: str) -> None:
    """``/work/main.py``, read-only, as ``python3 main.py`` would find it."""
    fd = os.open(SCRIPT, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        os.write(fd, source.encode("utf-8", "surrogatepass"))
    finally:
        os.close(fd)


def program(fd: int) -> dict[str, Any]:
    """The run's code and arguments, from its memory file."""
    what: dict[str, Any] = json.loads(os.pread(fd, os.fstat(fd).st_size, 0))
    return what


# --- C: the run, when it is forked ------------------------------------------------------


def run(
    rlimits: list[list[int]], what: dict[str, Any], fds: dict[str, int], *, warm: bool
) -> NoReturn:
    """In ``C``: the run itself; never returns."""
    try:
        os.setsid()
        for target, name in enumerate(("stdin", "stdout", "stderr")):
            os.dup2(fds[name], target)
        os.closerange(3, 1 << 30)  # close_range(2)
        set_rlimits(rlimits)
        # The launcher handles no signal and blocks none: what python3 sets at its
        # start (SIGINT raises KeyboardInterrupt, SIGPIPE and SIGXFSZ ignored) is all
        # there is, but for SIGINT, which the init set back to its default.
        if warm:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os._exit(run_python(what["code"], what["args"]))
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # ignored stays ignored across execve
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        argv = what["argv"]
        os.execve(argv[0], argv, ENVIRONMENT)
    except BaseException as exc:
        try:
            os.write(2, f"vx11 sandbox: could not start the run: {exc}\n".encode())
        finally:
            os._exit(127)


def run_python(source: str, args: list[str]) -> int:
    """Run ``source`` as ``python3 -I -u main.py ARGS`` would, in this interpreter;
    return its exit status."""
    import io

    for name in list(sys.modules):
        if name not in STARTUP_MODULES:
            del sys.modules[name]
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        old = getattr(sys, name)
        mode = "rb" if fd == 0 else "wb"
        raw = io.FileIO(fd, mode, closefd=False)
        raw.name = f"<{name}>"
        buffered = io.BufferedReader(raw) if fd == 0 else raw
        stream = io.TextIOWrapper(
            buffered,
            encoding=old.encoding,
            errors=old.errors,
            newline="\n",
            line_buffering=old.line_buffering,
            write_through=old.write_through,
        )
        stream.mode = mode[0]  # type: ignore[misc]  # as python3 sets it
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    sys.argv = ["main.py", *args]
    sys.orig_argv = [sys.orig_argv[0], "-I", "-u", "main.py", *args]
    set_command_line(sys.orig_argv)
    main = type(sys)("__main__")
    main.__dict__.update(
        __file__=SCRIPT,
        __cached__=None,
        __builtins__=sys.modules["builtins"],
        __annotations__={},
        __loader__=sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", SCRIPT),
    )
    sys.modules["__main__"] = main
    try:
        exec(compile(source, SCRIPT, "exec"), main.__dict__)
        status = 0
    except SystemExit as exc:
        status = exit_status(exc)
    except BaseException as exc:
        traceback = exc.__traceback__.tb_next if exc.__traceback__ else None
        exc.with_traceback(traceback)  # from main.py on, as python3 prints it
        sys.excepthook(type(exc), exc, traceback)
        status = 1
        if isinstance(exc, KeyboardInterrupt):
            status = -signal.SIGINT  # python3 then ends by the signal (below)
    return finish(status)


def set_command_line(argv: list[str], *, title: bool = False) -> None:
    """Make ``/proc/self/cmdline`` read ``argv``, as it would after ``execve`` (then NUL
    bytes): they are written over the launcher's own command line, which holds the
    launcher's source and so has room for them (what does not fit is cut). With
    ``title``, ``argv`` is one string and nothing follows it: the rest of the room is
    not NUL, which makes the kernel read the command line up to its first NUL, as it
    does for ``setproctitle``."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    text = b"\0".join(arg.encode("utf-8", "surrogateescape") for arg in argv)
    text = text[: end - start - 1]
    ctypes.memmove(start, text, len(text))
    ctypes.memset(start + len(text), 0, end - start - len(text))
    if title:
        ctypes.memset(start + len(text) + 1, ord(" "), end - start - len(text) - 1)


def exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def finish(status: int) -> int:
    """What the interpreter does at its exit: join threads, run atexit, flush."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
    except SystemExit as exc:
        status = exit_status(exc)
    except BaseException:
        sys.excepthook(*sys.exc_info())
    atexit = sys.modules.get("atexit")
    if atexit is not None:
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            status = 120
    if status == -signal.SIGINT:  # an uncaught KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status


# --- the launcher ---------------------------------------------------------------------


ENVIRONMENT = dict(os.environ)
"""The environment bubblewrap gave the launcher; every run gets exactly this."""


def warm_up() -> None:
    """Do once, here, what the first python code in a fresh interpreter does: start the
    compiler and the text layer of a stream (done lazily, they cost every forked run
    about 0.8 ms). What it makes is garbage; it imports nothing."""
    with open(os.devnull, "w", encoding="utf-8") as sink:
        exec(compile("print('warm', file=sink)\n", "<vx11-warm-up>", "exec"), {"sink": sink})


def main() -> None:
    control = socket.socket(fileno=CONTROL_FD)
    os.set_inheritable(CONTROL_FD, False)
    tmpfs_bytes = int(sys.argv[2])
    read_filter()
    warm_up()
    ready = try_prepare(tmpfs_bytes)
    running: socket.socket | None = None  # the channel of the run handed over last
    while True:
        waiting = [control] if running is None else [control, running]
        readable, _, _ = select.select(waiting, [], [])
        if running is not None and running in readable:  # its init has exited
            running.close()
            running = None
            if ready is None:  # the next run's, now that the last one is gone
                ready = try_prepare(tmpfs_bytes)
            continue
        got = receive(control)
        if got is None:  # the worker is gone: so is every run it started
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
            return
        request, fds = got
        try:
            if ready is None:
                ready = try_prepare(tmpfs_bytes)
            if ready is None:
                raise OSError("could not prepare its namespaces (see the worker's log)")
            init_pid, channel = ready
            ready = None
            pidfd = os.pidfd_open(init_pid)
            try:
                reply(fds["reply"], {"started": True}, [pidfd])  # before the init's own
            finally:
                os.close(pidfd)
            if running is not None:
                running.close()
            running = channel  # kept: it reads as closed once the init has exited
            hand_over(channel, request, fds)
        except OSError as exc:  # no run prepared, or its init gone (killed meanwhile)
            with contextlib.suppress(OSError):
                reply(fds["reply"], {"error": f"{type(exc).__name__}: {exc}"})
        finally:
            for fd in fds.values():
                os.close(fd)
        del request, fds, got


def try_prepare(tmpfs_bytes: int) -> tuple[int, socket.socket] | None:
    """The next run prepared, or None (said on the launcher's stderr, the worker's log)
    when it cannot be now: the launcher goes on, and tries again for the next run.

    A few quick tries first: the last run's init, which has just exited, holds a pid of
    the slot's cgroup until it is reaped, and a run limited to one process leaves no
    other room for the next run's two."""
    for attempt in range(PREPARE_TRIES):
        try:
            return prepare(tmpfs_bytes)
        except OSError as exc:
            if attempt == PREPARE_TRIES - 1:
                with contextlib.suppress(OSError):
                    os.write(2, f"vx11 launcher: could not prepare a run: {exc}\n".encode())
            else:
                time.sleep(0.002)
    return None


def hand_over(channel: socket.socket, request: dict[str, Any], fds: dict[str, int]) -> None:
    """Give a prepared init its run: the request and its descriptors."""
    channel.sendmsg(
        [json.dumps(request).encode()],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fds[n] for n in FD_NAMES]))],
    )


if __name__ == "__main__":
    main()
