"""A real PostgreSQL server for tests: initdb in a temp dir, a free loopback port, password auth."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def pg_bindir() -> Path:
    """Find initdb/pg_ctl: pg_config's bindir, else Debian's versioned dir."""
    candidates: list[str] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for cand in candidates:
        if cand and Path(cand, "initdb").is_file() and Path(cand, "pg_ctl").is_file():
            return Path(cand)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install the postgresql package "
        "(.ci/run does this with apt)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """One throwaway cluster. Root cannot run postgres, so the server runs as the `postgres` user."""

    superuser = "postgres"

    def __init__(self, password: str = "postgres") -> None:
        self.bindir = pg_bindir()
        self.password = password
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "server.log"
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self._as_owner(["mkdir", "-p", str(self.sockdir)])

    def _as_owner(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._run_as, *cmd], capture_output=True, text=True, check=True)

    def init(self) -> PgServer:
        pwfile = self.base / "pw"
        self._as_owner(["sh", "-c", f"umask 077; printf '%s' '{self.password}' > {pwfile}"])
        self._as_owner([
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser,
            "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
            "--no-sync",
        ])
        return self

    def start(self) -> PgServer:
        opts = (f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=100")
        self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o", opts,
                        "-l", str(self.logfile), "-w", "-t", "60", "start"])
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self._run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir),
                        "-m", mode, "-w", "stop"], capture_output=True, check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        return (f"host=127.0.0.1 port={self.port} dbname={dbname} user={user or self.superuser} "
                f"password={password or self.password}")

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
        import psycopg2

        conn = psycopg2.connect(self.dsn(dbname))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def wait_until(self, sql: str, predicate: object, timeout: float = 30.0) -> list[tuple[object, ...]]:
        deadline = time.monotonic() + timeout
        rows: list[tuple[object, ...]] = []
        while time.monotonic() < deadline:
            rows = self.execute(sql)
            if callable(predicate) and predicate(rows):
                return rows
            time.sleep(0.2)
        raise AssertionError(f"condition not met within {timeout}s; last rows: {rows}")
