"""Warm dbt starts: a per-host server that has imported dbt forks each dbt process instead of a new Python.

Importing dbt costs about 1.5 s of CPU, paid by every dbt command: on a worker running one task per dbt
node, that is most of each task's cost. A server started on demand imports dbt once and listens on a
Unix socket in a private, host-local dir (0700, ``$DLH_DBT_WARM_DIR`` or ``<tmp>/dlh-dbt-warm-<uid>``).
For each dbt command the client passes its argv, environment, working dir and the write end of its
output pipe; the server forks, and the child becomes what ``python -m dlh_airflow_common._dbt_entry``
would have been: its own session (cancellation signals its process group), that environment only,
that pipe as stdout/stderr. The server never sees a dbt result and holds no secret after the fork
(they travel over the socket into the child's environment, never to disk or argv).

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
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from dlh_airflow_common.core.profiles import SECRET_PREFIX

log = logging.getLogger(__name__)

WARM_ENV = "DLH_DBT_WARM_START"
WARM_DIR_ENV = "DLH_DBT_WARM_DIR"
_IDLE_SECONDS = 300.0
_REUSE_SECONDS = 120.0
_MAX_REQUEST = 16 * 1024 * 1024
_SERVER_MAIN = ("import sys; from dlh_airflow_common.core.warm import serve; "
                "sys.exit(serve(sys.argv[1], sys.argv[2]))")
_SERVER_ENV = {"PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV", WARM_DIR_ENV}


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
    a sidecar sharing ``/tmp``) must get its own server, or dbt would not find the project it was given.
    """
    parts = [sys.executable, *_host_view()]
    for dist in ("dbt-core", "dlh-airflow-common"):
        try:
            parts.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            parts.append("-")
    for module in ("warm.py", "warmup.py"):  # the server's code: an edit in place needs a new server
        with contextlib.suppress(OSError):
            parts.append(str(Path(__file__).with_name(module).stat().st_mtime_ns))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _host_view() -> list[str]:
    """The namespaces and root this process sees (Linux ``/proc/self/ns``; elsewhere only the root)."""
    view = []
    for ns in ("mnt", "net", "pid", "user", "uts", "ipc", "cgroup"):
        try:
            view.append(os.readlink(f"/proc/self/ns/{ns}"))
        except OSError:
            view.append("-")
    with contextlib.suppress(OSError):
        root = os.stat("/")
        view.append(f"{root.st_dev}:{root.st_ino}")
    return view


def enabled() -> bool:
    return os.environ.get(WARM_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class WarmProcess:
    """A dbt child forked by the warm server: the parts of ``subprocess.Popen`` the runner uses."""

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
        data = b""
        with contextlib.suppress(OSError):
            while not data.endswith(b"\n"):
                chunk = self._conn.recv(64)
                if not chunk:
                    break
                data += chunk
        try:
            self.returncode = int(data.strip())
        except ValueError:  # the server went away: the child's exit status is lost
            self.returncode = -1
        self._conn.close()


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
        conn.settimeout(10)
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
        request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd) if cwd else None}).encode()
        conn.sendmsg([len(request).to_bytes(8, "big") + request],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_fd]))])
        pid = int(_read_line(conn))
        conn.settimeout(None)
    except (OSError, ValueError) as exc:
        log.debug("Warm dbt start failed (%s); starting a new process", exc)
        conn.close()
        os.close(read_fd)
        os.close(write_fd)
        return None
    os.close(write_fd)  # the child holds it now: EOF on our end when dbt (and all it started) exits
    _touch(home / f"{key}.used")
    return WarmProcess(conn, pid, os.fdopen(read_fd, "r", buffering=1, errors="replace"))


def _read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            raise OSError("warm server closed the connection")
        data += chunk
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
    """Import dbt, then fork one child per request until idle; one server per key (an flock)."""
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
    children: dict[int, socket.socket] = {}
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
            if listener in ready:
                conn, _ = listener.accept()
                last = time.monotonic()
                loaded = preloader.preload()
                if loaded:
                    say(f"preloaded {len(loaded)} modules its dbt processes imported")
                    if not _fork_safe(home, key, say, f"after importing {', '.join(loaded)}"):
                        conn.close()  # this client starts dbt cold; running children finish first
                        accepting = False
                        _stop_listening(sock_path, listener)
                        continue
                with contextlib.suppress(OSError, ValueError):
                    pid = _fork_child(conn, listener, wake_r, wake_w, home, key)
                    children[pid] = conn
                    continue
                conn.close()
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
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            conn.close()


def _fork_child(conn: socket.socket, listener: socket.socket, wake_r: int, wake_w: int, home: Path,
                key: str) -> int:
    conn.settimeout(10)
    header, fds, _flags, _addr = conn.recvmsg(8, socket.CMSG_SPACE(array.array("i", [0]).itemsize))
    out_fd = -1
    for level, kind, data in fds:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            out_fd = array.array("i", data[:array.array("i", [0]).itemsize])[0]
    size = int.from_bytes(header, "big")
    if out_fd < 0 or not 0 < size <= _MAX_REQUEST:
        raise ValueError("bad request")
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("short request")
        body += chunk
    request: dict[str, Any] = json.loads(body)
    pid = os.fork()
    if pid == 0:  # the child: becomes the dbt process
        code = 2
        try:
            listener.close()
            conn.close()
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # dbt's cancel is KeyboardInterrupt
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
            os.close(null)
            os.close(out_fd)
            if request.get("cwd"):
                os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = ["dbt", *request["argv"]]
            from dlh_airflow_common._dbt_entry import main
            from dlh_airflow_common.core.warmup import record_imports

            before = list(sys.modules)
            code = main(list(request["argv"]))
            record_imports(home, key, before)  # the server imports them for the next forks
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # the child must never return into the server loop
            import traceback

            traceback.print_exc()
            code = 2
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(out_fd)
    conn.sendall(f"{pid}\n".encode())
    conn.settimeout(None)
    return pid
