"""A real S3 endpoint for tests: moto's server in its own process on a free loopback port.

Started once per session like PostgreSQL (tests/pgserver.py). Airflow reaches it through an ``aws``
connection whose extra names the endpoint URL, and ObjectStoragePath (s3fs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.pgserver import free_port

# moto accepts any keys; these stand for a deployment's secret, which must never reach a file or argv.
ACCESS_KEY = "AKIADLHTESTKEY000001"
SECRET_KEY = "S3-Secret-Canary-9d3b71e0aa"
CONN_ID = "dlh_s3"
BUCKET = "dlh-state"


class S3Server:
    """One moto server process; :meth:`stop` ends it (by its own pid)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkdtemp(prefix="motos3-")) / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 60.0) -> S3Server:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                          "-p", str(self.port)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto S3 server did not answer on {self.endpoint} within {wait:.0f}s "
                                       f"(exit {self.proc.returncode}); its log: {self.log.read_text()[-2000:]}")
                time.sleep(0.2)

    def client(self) -> object:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
            Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
        return body

    def connection_env(self, conn_id: str = CONN_ID) -> tuple[str, str]:
        """``AIRFLOW_CONN_<ID>`` and its value: an aws connection to this endpoint, with bounded waits."""
        value = json.dumps({"conn_type": "aws", "login": ACCESS_KEY, "password": SECRET_KEY, "extra": {
            "endpoint_url": self.endpoint, "region_name": "us-east-1",
            "config_kwargs": {"connect_timeout": 3, "read_timeout": 10, "retries": {"max_attempts": 2}}}})
        return f"AIRFLOW_CONN_{conn_id.upper()}", value

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def install_connection(server: S3Server, conn_id: str = CONN_ID) -> None:
    name, value = server.connection_env(conn_id)
    os.environ[name] = value
