"""Warm dbt starts: a per-host server that has imported dbt forks each dbt process instead of a new Python.

Importing dbt costs about 1.5 s of CPU, paid by every dbt command: on a worker running one task per dbt
node, that is most of each task's cost. A server started on demand imports dbt once and listens on a
Unix socket in a private, host-local dir (0700, ``$DLH_DBT_WARM_DIR`` or ``<tmp>/dlh-dbt-warm-<uid>``).

The server cannot hurt a run. It accepts a connection only from its own uid (``SO_PEERCRED``; the
client checks the server's uid the same way) and forks at once: the *child* reads the request (argv,
environment with its ``DBT_ENV_SECRET_*`` values, working dir, the write end of the client's output
pipe), so no request, and no secret, ever enters the server's memory, which later forks copy. The
child closes every file descriptor it inherited (the server's lock, listener and other tasks'
connections; only multiprocessing's resource-tracker pipe stays, which forks are meant to share),
checks that it sees what the client sees (the same namespaces, root, working dir and dbt paths, per
request: a key computed once cannot tell), and only then becomes what
``python -m dlh_airflow_common._dbt_entry`` would have been: its own session (cancellation signals
its process group), that environment only, that pipe as stdout/stderr. A child that cannot start dbt
says why on the connection and the client starts dbt cold, with one log line. The child writes its
exit code on its own connection just before it exits, so the code reaches the client whether the
server still runs or not; a child killed by a signal writes nothing, and then the server (if alive)
reports the signal, or the connection just closes, which the client reports as killed.

A fork inherits, from the task that started the server, what the environment does not reset: its
cgroup (memory and CPU limits are those of that task's container or unit), its rlimits, umask and
nice value, and its user and groups. It does not inherit that task's environment (each child gets
its request's) nor its working dir (the server runs in ``/``; each child changes to its request's).

It is used only when dbt runs beside this Python (the entry module), and only on a host that starts
dbt again within ``_REUSE_SECONDS`` of the last start (so a pod that runs one task never pays for a
server it will not use); anything unexpected falls back to a plain child process. The server exits
after ``_IDLE_SECONDS`` without a command, and its socket name carries the Python, dbt and library
versions, so a deploy of new code starts a new server. ``DLH_DBT_WARM_START=0`` turns it off.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import IO, Any, NoReturn

from dlh_airflow_common.core.profiles import SECRET_PREFIX

log = logging.getLogger(__name__)

WARM_ENV = "DLH_DBT_WARM_START"
WARM_DIR_ENV = "DLH_DBT_WARM_DIR"
_IDLE_SECONDS = 300.0
_REUSE_SECONDS = 120.0
_HANDSHAKE_SECONDS = 10.0
_MAX_REQUEST = 16 * 1024 * 1024
_SERVER_MAIN = ("import sys; from dlh_airflow_common.core.warm import serve; "
                "sys.exit(serve(sys.argv[1], sys.argv[2]))")
_SERVER_ENV = {"PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV", WARM_DIR_ENV}
_NAMESPACES = ("mnt", "net", "pid", "user", "uts", "ipc", "cgroup")
# Paths dbt is given through its environment: the child must see the same files there.
_PATH_VARS = ("DBT_PROJECT_DIR", "DBT_PROFILES_DIR", "DBT_TARGET_PATH", "DBT_LOG_PATH")
# A child that ended without an exit code (killed by a signal its server could not report): as SIGKILL.
KILLED = -int(signal.SIGKILL)


def warm_dir() -> Path | None:
    """The private dir for servers and sockets, or None when it is not ours alone (then: cold starts)."""
    path = Path(os.environ.get(WARM_DIR_ENV) or Path(tempfile.gettempdir()) / f"dlh-dbt-warm-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or not path.is_dir() or path.is_symlink():
        log.warning("Not using warm dbt starts: %s is not a private dir of this user (0700)", path)
        return None
    return path


def _key() -> str:
    """Names the server: another Python, dbt or library version, or another view of the host, needs its own.

    A forked child sees the server's filesystem, network and processes, not the client's: a client in
    another container or mount namespace (a read-only bind mount of the project made with ``unshare``,
    a sidecar sharing ``/tmp``) should get its own server. The key only picks a server; whether its
    fork may serve a request is checked per request (:func:`_view_mismatch`).
    """
    parts = [sys.executable, *_namespaces().values()]
    with contextlib.suppress(OSError):
        root = os.stat("/")
        parts.append(f"{root.st_dev}:{root.st_ino}")
    for dist in ("dbt-core", "dlh-airflow-common"):
        try:
            parts.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            parts.append("-")
    for module in ("warm.py", "warmup.py"):  # the server's code: an edit in place needs a new server
        with contextlib.suppress(OSError):
            parts.append(str(Path(__file__).with_name(module).stat().st_mtime_ns))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _namespaces() -> dict[str, str]:
    """The namespaces this process is in (Linux ``/proc/self/ns``; "-" where unreadable)."""
    view = {}
    for ns in _NAMESPACES:
        try:
            view[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            view[ns] = "-"
    return view


def _file_id(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def _view(env: dict[str, str], cwd: Path | None) -> dict[str, Any]:
    """What this client sees that a fork must see too: its namespaces and the files dbt is pointed at."""
    paths = ["/", *(env[v] for v in _PATH_VARS if env.get(v)), *([str(cwd)] if cwd else [])]
    return {"ns": _namespaces(), "files": {p: _file_id(p) for p in paths}}


def _view_mismatch(view: Any) -> str | None:
    """Why this process does not see what the client saw (None: it does); a few readlinks and stats."""
    if not isinstance(view, dict):
        return "the client sent no view of its host"
    theirs, ours = view.get("ns") or {}, _namespaces()
    for ns, mine in ours.items():
        if theirs.get(ns) != mine:
            return f"another {ns} namespace (the server is in {mine}, the client in {theirs.get(ns)})"
    for path, seen in (view.get("files") or {}).items():
        here = _file_id(path)
        if here != seen:
            what = "missing" if here is None else "another file"
            return f"{path} is {what} for the server" + (" (missing for the client)" if seen is None else "")
    return None


def enabled() -> bool:
    return os.environ.get(WARM_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end (None where ``SO_PEERCRED`` does not exist)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return int(uid)


class WarmProcess:
    """A dbt child forked by the warm server: the parts of ``subprocess.Popen`` the runner uses.

    Its return code arrives on the connection (``exit <code>``), written by the child itself as it
    exits, or by the server for a child killed by a signal; a connection that closes without one is a
    child killed while its server was gone: :data:`KILLED`, with a warning.
    """

    def __init__(self, conn: socket.socket, pid: int, stdout: IO[str]) -> None:
        self._conn = conn
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            self._read_code()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired("warm dbt", timeout or 0)
            self._read_code()
        assert self.returncode is not None
        return self.returncode

    def _read_code(self) -> None:
        line = ""
        with contextlib.suppress(OSError, UnicodeDecodeError):
            line = _read_line(self._conn)
        try:
            word, code = line.split()
            if word != "exit":
                raise ValueError(line)
            self.returncode = int(code)
        except ValueError:
            log.warning("Warm dbt (pid %s) ended without an exit code and its server could not report "
                        "one: it was killed by a signal; reported as return code %d", self.pid, KILLED)
            self.returncode = KILLED
        self._conn.close()


class _Refused(Exception):
    """The server or its fork would not start dbt for this request (the client starts it cold)."""


def start(argv: list[str], env: dict[str, str], cwd: Path | None) -> WarmProcess | None:
    """Start ``_dbt_entry`` with ``argv`` through the warm server; None when there is none (yet)."""
    if not enabled():
        return None
    home = warm_dir()
    if home is None:
        return None
    key = _key()
    sock_path = home / f"{key}.sock"
    if _unsafe(home, key).exists():
        return None
    if not sock_path.exists():
        _maybe_spawn(home, key)
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(_HANDSHAKE_SECONDS)
        conn.connect(str(sock_path))
    except OSError as exc:
        conn.close()
        if not _locked(home / f"{key}.lock"):  # its server died without cleaning up (SIGKILL, OOM)
            log.debug("Removing the stale warm dbt socket %s (%s)", sock_path, exc)
            with contextlib.suppress(OSError):
                sock_path.unlink()
            _maybe_spawn(home, key)
        return None
    read_fd, write_fd = os.pipe()
    try:
        uid = _peer_uid(conn)
        if uid is not None and uid != os.getuid():
            raise _Refused(f"its server {sock_path} runs as uid {uid}, not as this user ({os.getuid()})")
        request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd) if cwd else None,
                              "view": _view(env, cwd)}).encode()
        conn.sendmsg([len(request).to_bytes(8, "big") + request],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_fd]))])
        reply = _read_line(conn).strip()
        if not reply.startswith("pid "):
            raise _Refused(reply or "the warm dbt server closed the connection")
        pid = int(reply.split()[1])
        conn.sendall(b"go\n")  # until this, the fork may not start dbt: a client that gave up gets no dbt
        conn.settimeout(None)
    except (OSError, ValueError, _Refused) as exc:
        why = f"timed out after {_HANDSHAKE_SECONDS:.0f}s waiting for the warm dbt server" \
            if isinstance(exc, TimeoutError) else str(exc)
        log.warning("Starting dbt cold, not from the warm server: %s", why)
        conn.close()
        os.close(read_fd)
        os.close(write_fd)
        return None
    os.close(write_fd)  # the child holds it now: EOF on our end when dbt (and all it started) exits
    _touch(home / f"{key}.used")
    return WarmProcess(conn, pid, os.fdopen(read_fd, "r", buffering=1, errors="replace"))


def _read_line(conn: socket.socket) -> str:
    """One line from the connection (a short protocol line); OSError when it closes first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)  # byte by byte: whatever follows the line stays for the next reader
        if not chunk:
            raise OSError("the warm dbt server closed the connection")
        data += chunk
        if len(data) > 4096:
            raise ValueError("warm dbt protocol line too long")
    return data.decode()


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.touch()


def _maybe_spawn(home: Path, key: str) -> None:
    """Start a server when this host starts dbt again soon after a cold start (this one stays cold)."""
    stamp = home / f"{key}.used"
    try:
        recent = time.time() - stamp.stat().st_mtime < _REUSE_SECONDS
    except OSError:
        recent = False
    _touch(stamp)
    if not recent or _locked(home / f"{key}.lock"):
        return
    # The server's own environment reaches no dbt process (each child gets its request's): keep it bare.
    env = {k: v for k, v in os.environ.items() if k in _SERVER_ENV or k.startswith(("LC_", "PYTHON"))
           or (k.startswith("DBT_") and not k.startswith(SECRET_PREFIX))}
    with open(os.open(home / f"{key}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        subprocess.Popen([sys.executable, "-c", _SERVER_MAIN, str(home), key],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/", env=env,
                         start_new_session=True, close_fds=True)


def _locked(lock: Path) -> bool:
    """True while a server (starting or serving) holds the lock."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken just now
    return False


# -- the server -----------------------------------------------------------------------------------
def serve(home_dir: str, key: str) -> int:
    """Import dbt, then fork one child per connection until idle; one server per key (an flock)."""
    home = Path(home_dir)
    lock_fd = os.open(home / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another server has it
    import dbt.cli.main  # noqa: F401  (the point of this server: children start with dbt imported)

    import dlh_airflow_common._dbt_entry  # noqa: F401
    from dlh_airflow_common.core.warmup import Preloader, warm_up

    def say(text: str) -> None:
        print(f"warm dbt server {os.getpid()}: {text}", flush=True)

    warm_up(home, say)  # before listening: a client meanwhile starts cold, as with no server
    preloader = Preloader(home, key)
    if not _fork_safe(home, key, say, "after the warm-up"):
        return 0

    sock_path = home / f"{key}.sock"
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    os.chmod(sock_path, 0o600)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}  # each child's connection: to report a signal that killed it
    last = time.monotonic()
    print(f"warm dbt server {os.getpid()} listening on {sock_path}", flush=True)
    accepting = True
    try:
        while children or (accepting and time.monotonic() - last < _IDLE_SECONDS):
            ready = select.select([listener, wake_r] if accepting else [wake_r], [], [], 5.0)[0]
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            _reap(children)
            if listener not in ready:
                continue
            conn, _ = listener.accept()
            last = time.monotonic()
            try:
                uid = _peer_uid(conn)
            except OSError:
                uid = -1
            if uid is not None and uid != os.getuid():
                say(f"refused a connection from uid {uid}: only its own user ({os.getuid()}) may use it")
                conn.close()
                continue
            loaded = preloader.preload()
            if loaded:
                say(f"preloaded {len(loaded)} modules its dbt processes imported")
                if not _fork_safe(home, key, say, f"after importing {', '.join(loaded)}"):
                    conn.close()  # this client starts dbt cold; running children finish first
                    accepting = False
                    _stop_listening(sock_path, listener)
                    continue
            try:
                pid = os.fork()
            except OSError as exc:
                say(f"fork failed: {exc}")
                conn.close()
                continue
            if pid == 0:
                _child(conn, [listener, *children.values()], home, key)
            children[pid] = conn
    finally:
        _stop_listening(sock_path, listener)
    return 0


def _stop_listening(sock_path: Path, listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock_path.unlink()  # new clients start cold (and spawn a server) from here on
    listener.close()


def _fork_safe(home: Path, key: str, say: Any, when: str) -> bool:
    """False (and no warm starts for this key from now on) when the server has more than one thread."""
    from dlh_airflow_common.core.warmup import os_threads

    threads = os_threads()
    if threads == 1:
        return True
    say(f"{threads} threads {when}: forking would copy locks those threads hold; no warm starts "
        f"for this version (remove {_unsafe(home, key)} to try again)")
    _touch(_unsafe(home, key))
    return False


def _unsafe(home: Path, key: str) -> Path:
    return home / f"{key}.unsafe"


def _reap(children: dict[int, socket.socket]) -> None:
    """Collect ended children; tell the client of one killed by a signal (one that exited said so itself)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):  # after the child's own line, if it wrote one: never read
                conn.settimeout(0.5)
                conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            conn.close()


# -- a forked child -------------------------------------------------------------------------------
def _close_inherited(conn_fd: int) -> None:
    """Close every descriptor but 0, 1, 2, the child's connection and multiprocessing's tracker pipe.

    The server's lock, listener, wake-up pipe and other tasks' connections must not live on in a dbt
    process: they hold another task's connection open (its exit code lost with the server) and the
    server's lock (no new server after it dies). The resource tracker's pipe is meant to be shared by
    forks (the adapter's locks register there; its number, closed, would fail dbt's first adapter).
    """
    keep = {conn_fd}
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    tracker_fd = getattr(getattr(tracker, "_resource_tracker", None), "_fd", None)
    if isinstance(tracker_fd, int):
        keep.add(tracker_fd)
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every number up to the limit
        fds = list(range(3, min(os.sysconf("SC_OPEN_MAX"), 65536)))
    for fd in fds:
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _receive(conn: socket.socket) -> tuple[dict[str, Any], int]:
    """The request and the client's output pipe (its write end), read in the child, never the server."""
    size_fd = array.array("i", [0]).itemsize
    header, ancillary, _flags, _addr = conn.recvmsg(8, socket.CMSG_SPACE(size_fd))
    if not header:
        raise _Refused("the client closed the connection before sending a request (a probe?)")
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", data[:len(data) - len(data) % size_fd]))
    size = int.from_bytes(header, "big") if len(header) == 8 else 0
    if len(fds) != 1 or not 0 < size <= _MAX_REQUEST:
        raise ValueError("a malformed request (no output pipe, or a bad size)")
    body = bytearray()
    while len(body) < size:
        chunk = conn.recv(min(size - len(body), 1 << 20))
        if not chunk:
            raise ValueError("a short request")
        body += chunk
    request = json.loads(body)
    if not isinstance(request, dict):
        raise ValueError("a malformed request")
    return request, fds[0]


def _child(conn: socket.socket, inherited: list[socket.socket], home: Path, key: str) -> NoReturn:
    """Become the dbt process of the request on ``conn``; never returns into the server loop.

    Anything that fails before dbt starts is a refusal (``refused: why``): the client starts dbt cold.
    """
    code = 3
    started = False
    try:
        for sock in inherited:
            sock.detach()  # closed below, with every other inherited descriptor
        signal.set_wakeup_fd(-1)
        _close_inherited(conn.fileno())
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # dbt's cancel is KeyboardInterrupt
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.setsid()
        conn.settimeout(_HANDSHAKE_SECONDS)
        request, out_fd = _receive(conn)
        why = _view_mismatch(request.get("view"))
        if why:
            raise _Refused(why)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        argv = [str(a) for a in request["argv"]]
        from dlh_airflow_common._dbt_entry import main
        from dlh_airflow_common.core.warmup import record_imports

        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(null)
        os.close(out_fd)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["dbt", *argv]
        del request  # the secrets now live in this process's environment only
        conn.sendall(f"pid {os.getpid()}\n".encode())
        if _read_line(conn) != "go\n":
            raise _Refused("the client gave up")
        conn.settimeout(None)
        started = True
        before = list(sys.modules)
        code = main(argv)
        record_imports(home, key, before)  # the server imports them for the next forks
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # the child must never return into the server loop
        if not started:
            why = str(exc) if isinstance(exc, _Refused) else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                print(f"warm dbt server fork {os.getpid()}: refused a request: {why}", flush=True)
                conn.sendall(f"refused: {why}\n".encode())
            os._exit(3)
        _report_crash(exc)
        code = 2
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if started:
            with contextlib.suppress(Exception):
                conn.sendall(f"exit {code}\n".encode())
        os._exit(code)


def _report_crash(exc: BaseException) -> None:
    """Our own code failed after dbt started: a headline naming it, then the traceback for detail."""
    import traceback

    from dlh_airflow_common._dbt_entry import exception_event

    with contextlib.suppress(Exception):
        event = exception_event(exc)
        event["data"]["message"] = f"the warm dbt fork failed: {type(exc).__name__}: {exc}"
        sys.stdout.write(json.dumps(event) + "\n")
        traceback.print_exc()
