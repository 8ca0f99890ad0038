"""Run a generated Python program for grading, contained on Linux.

:func:`run_program` writes the program into a fresh temporary folder and runs it in a
new session with a clean environment. A small launcher (``_LAUNCH``, run with
``python -I -c``) sets limits and namespaces before the program starts:

* **limits** (``setrlimit``): address space (``memory_mb``), CPU time (the timeout plus
  one second), file size (64 MiB), no core files; the launcher dies with the grader
  (``PR_SET_PDEATHSIG``);
* **namespaces** (``unshare``, as root or as an unprivileged user where user
  namespaces are enabled): a new user namespace (the program runs as uid 1000 there,
  without capabilities), a new network namespace (no interface but a down loopback:
  every connect fails, from the program, its children, or C code), a new mount
  namespace where every mount is remounted read-only except the temporary folder, and
  a new PID namespace whose init is the program: when it ends or is killed, the kernel
  kills every process it left behind, ``setsid`` or not;
* **a socket filter** (seccomp, x86-64 and arm64; it needs no privilege): creating a
  Unix, IPv4 or IPv6 socket fails, for the program and every process it starts. A Unix
  socket bound to a path (a database, a container daemon) is reachable from any
  network namespace, so this is what keeps those out;
* **in-process guards** (``sys.addaudithook``, always): network calls and writes
  outside the temporary folder raise at the Python level. Where a namespace cannot be
  made (``unshare`` refused, e.g. a container without user namespaces), the guards also
  refuse to start processes and to load C code through ``ctypes``; this contains
  mistakes, not hostile code (a C extension can bypass an audit hook).

The process group is killed at the timeout, after the program ends (background
children included) and when grading is interrupted (Ctrl-C). A program passes only if
it runs to its end: a random token, handed over outside the program's source, is
written after the last line has run. An early ``sys.exit(0)``, ``os._exit(0)`` or a
``unittest.main()`` never reaches it.

:func:`isolation` says which of these this machine gives.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile

# Runs first, in the child: limits, then namespaces, then exec of _BOOT as PID 1.
# argv: box, report file, memory bytes, cpu seconds, namespaces (1/0), boot source,
# the grader's pid
_LAUNCH = r"""
import ctypes, json, os, platform, re, resource, sys
box, report, mem, cpu, use_ns, boot, grader = sys.argv[1:8]
rep = open(report, "w")
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the grader
if os.getppid() != int(grader):  # the grader died before the line above
    os._exit(111)
resource.setrlimit(resource.RLIMIT_AS, (int(mem), int(mem)))
resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu) + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
got = {"network": False, "filesystem": False, "processes": False, "sockets": False, "error": ""}

def check(r, what):
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")

def setup():
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(0x10000000 | 0x40000000 | 0x00020000 | 0x20000000), "unshare")
    got["network"] = True  # a fresh network namespace: no route anywhere
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"1000 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"1000 {gid} 1")
    got["processes"] = True  # the next fork is PID 1 of a new PID namespace
    b = box.encode()
    check(libc.mount(b"none", b"/", None, 16384 | (1 << 18), None), "make / private")
    check(libc.mount(b, b, None, 4096 | 16384, None), "bind the temporary folder")
    points = []
    for line in open("/proc/self/mountinfo"):
        p = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if p != box and p not in points:
            points.append(p)
    keep = {2: 2, 4: 4, 8: 8, 1024: 1024, 2048: 2048, 4096: 1 << 21}
    for p in points:
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        flags = 1 | 32 | 4096  # MS_RDONLY | MS_REMOUNT | MS_BIND
        for st_bit, ms_bit in keep.items():
            if st.f_flag & st_bit:
                flags |= ms_bit
        check(libc.mount(None, p.encode(), None, flags, None), f"read-only {p}")
    got["filesystem"] = True

def socket_filter():
    # seccomp: socket(AF_UNIX | AF_INET | AF_INET6, ...) fails with EPERM, for the
    # program and every process it starts (a path socket is outside any namespace)
    arch, nr = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}[platform.machine()]
    code = [(0x20, 0, 0, 4), (0x15, 0, 6, arch), (0x20, 0, 0, 0), (0x15, 0, 4, nr),
            (0x20, 0, 0, 16), (0x15, 3, 0, 1), (0x15, 2, 0, 2), (0x15, 1, 0, 10),
            (0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050001)]

    class Ins(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                    ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Ins))]

    prog = Prog(len(code), (Ins * len(code))(*[Ins(*c) for c in code]))
    check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")
    check(libc.prctl(22, 2, ctypes.byref(prog), 0, 0), "seccomp")
    got["sockets"] = True

if use_ns == "1":
    try:
        setup()
    except OSError as e:
        got["error"] = str(e)
try:
    socket_filter()
except (OSError, KeyError) as e:
    got["error"] = (got["error"] + "; " if got["error"] else "") + f"socket filter: {e!r}"
rep.write(json.dumps(got))
rep.close()
os.chdir(box)
contained = got["filesystem"] and got["processes"] and got["sockets"]
env = dict(os.environ, LONGSEQ_GUARD="%d%d" % (got["network"], contained))
argv = [sys.executable, "-I", "-c", boot, box, "program.py"]
if not got["processes"]:
    os.execve(sys.executable, argv, env)
pid = os.fork()
if pid == 0:
    libc.prctl(1, 9)
    os.execve(sys.executable, argv, env)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
os._exit(128 - code if code < 0 else code & 0xFF)  # killed by signal n: 128 + n
"""

# Runs the program: audit-hook guards, the program as __main__, then the token.
_BOOT = r"""
import os, sys

def _main():
    token = os.environ.pop("LONGSEQ_TOKEN")
    contained = os.environ.pop("LONGSEQ_GUARD", "00")[1] == "1"
    box, program = sys.argv[1], sys.argv[2]
    root = os.path.realpath(box) + os.sep
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    net = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
           "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"}
    paths = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown",
             "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree",
             "os.mkfifo", "os.mknod", "shutil.move", "shutil.copyfile", "os.replace"}
    spawn = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
             "os.fork", "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym",
             "ctypes.cdata", "ctypes.dlsym/handle"}
    realpath, fspath, PermErr = os.path.realpath, os.fspath, PermissionError

    def inside(p):
        if isinstance(p, int) or p is None:
            return True
        try:
            p = fspath(p)
        except TypeError:
            return True
        if isinstance(p, bytes):
            p = p.decode(errors="replace")
        return p == "/dev/null" or (realpath(p) + "/").startswith(root)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else (
                isinstance(flags, int) and flags & writes)
            if writing and not inside(path):
                raise PermErr(f"writing outside the grading folder is disabled: {path}")
        elif event in net:
            raise OSError("network access is disabled while grading")
        elif event in paths:
            for p in args[:2]:
                if isinstance(p, (str, bytes, os.PathLike)) and not inside(p):
                    raise PermErr(f"changing files outside the grading folder is disabled: {p}")
        elif not contained and event in spawn:
            raise PermErr(f"{event} is disabled while grading (no process namespace here)")

    sys.addaudithook(hook)
    sys.argv = [program]
    import runpy
    runpy.run_path(program, run_name="__main__")
    sys.stdout.flush()
    os.write(1, ("\n" + token + "\n").encode())
    os._exit(0)

_main()
"""


def run_program(
    source: str, timeout: float = 10.0, memory_mb: int = 1024, namespaces: bool = True
) -> tuple[bool, str]:
    """Run ``source`` contained (see the module docstring); ``(ran to its end, why)``.

    ``namespaces=False`` skips the namespaces (the in-process guards alone), as on a
    machine that refuses them."""
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    token = secrets.token_hex(16)
    with (
        tempfile.TemporaryDirectory(prefix="longseq-grade-") as work,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        box = os.path.realpath(os.path.join(work, "box"))
        os.mkdir(box)
        with open(os.path.join(box, "program.py"), "w") as f:
            f.write(source)
        report = os.path.join(work, "isolation.json")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": box,
            "TMPDIR": box,
            "LONGSEQ_TOKEN": token,
        }
        args = [str(box), report, str(memory_mb * 2**20), str(int(timeout) + 1)]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-c",
                _LAUNCH,
                *args,
                "1" if namespaces else "0",
                _BOOT,
                str(os.getpid()),
            ],
            cwd=box,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, killed as a whole below
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # also on Ctrl-C: nothing it started outlives grading
            _kill_group(proc)
        out.seek(0)
        stdout = out.read()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if (b"\n" + token.encode() + b"\n") in stdout:
        return True, "passed"
    if timed_out:
        return False, f"timed out after {timeout:g} s"
    lines = stderr.strip().splitlines()
    code = proc.returncode
    if code is not None and (code < 0 or 128 < code < 128 + signal.NSIG):
        return False, f"killed by {signal.Signals(abs(code) % 128).name}"
    if lines and code != 0:
        return False, lines[-1]  # the exception that stopped it
    said = f": {lines[-1]}" if lines else ""
    return False, f"stopped before its end (exit status {code}){said}"


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@functools.cache
def isolation() -> dict:
    """What :func:`run_program` gets on this machine: ``network``, ``filesystem`` and
    ``processes`` are True where a namespace contains them, ``sockets`` where the
    socket filter is on (else only the in-process guards do); ``error`` says why one
    could not be had."""
    with tempfile.TemporaryDirectory(prefix="longseq-probe-") as work:
        box = os.path.join(work, "box")
        os.mkdir(box)
        report = os.path.join(work, "isolation.json")
        subprocess.run(
            [sys.executable, "-I", "-c", _LAUNCH, box, report, str(2**30), "5", "1", "pass"]
            + [str(os.getpid())],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LONGSEQ_TOKEN": "x"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        try:
            with open(report) as f:
                return json.load(f)
        except (OSError, ValueError):
            none = dict.fromkeys(("network", "filesystem", "processes", "sockets"), False)
            return {**none, "error": "the probe did not report"}
