"""The state store: object storage that every host of a deployment reads, instead of a shared volume.

A :class:`StateStore` is an fsspec filesystem plus a base path (``s3://bucket/prefix``). It counts
the requests it makes (object stores bill per request, and the bench prints them) and turns the
filesystem's errors into :class:`DbtStateStoreException` naming the URL and the fix, never a secret.

Airflow-free: the operator layer builds the filesystem from its connection; a detached supervisor
builds it from :data:`STORE_OPTIONS_ENV`, which reaches it only through its environment (never on
disk or in argv) and is removed from that environment before dbt starts.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple

from dlh_airflow_common.core.events import redact
from dlh_airflow_common.core.exceptions import DbtStateStoreException

# JSON of the fsspec storage options (credentials included) for a detached supervisor's filesystem.
STORE_OPTIONS_ENV = "DLH_DBT_STATE_STORE_OPTIONS"
# One S3 list request returns at most this many keys.
LIST_PAGE = 1000
# Bounded waits for a store that does not answer: connect, read, and attempts per request (botocore).
S3_CLIENT_CONFIG: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 15,
                                    "retries": {"max_attempts": 2, "mode": "standard"}}


class ObjectInfo(NamedTuple):
    tag: str  # changes whenever the object is rewritten
    modified: float  # epoch seconds, by the store's clock


class StateStore:
    """A base path on an fsspec filesystem; ``parts`` name objects below it (``a/b/c.json``)."""

    def __init__(self, fs: Any, url: str, secrets: Iterable[str] = ()) -> None:
        self.fs = fs
        self.url = url.rstrip("/")
        self.base = str(fs._strip_protocol(self.url)).rstrip("/")
        self.secrets = [s for s in secrets if s]
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def path(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    def _count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.counts[kind] += n

    def request_counts(self) -> dict[str, int]:
        """Requests made so far by kind (put, get, list, delete), and their total."""
        with self._lock:
            counts = dict(self.counts)
        return {**counts, "total": sum(counts.values())}

    @contextmanager
    def _errors(self, doing: str, missing: str = "raise") -> Iterator[None]:
        """Our exception for the store's errors; a missing object is re-raised (``missing="raise"``),
        or is a missing bucket (``"bucket"``: a write or the check)."""
        try:
            yield
        except FileNotFoundError as exc:
            if missing == "raise":
                raise
            raise self.failure(doing, Exception(f"NoSuchBucket: {exc}")) from None
        except Exception as exc:
            raise self.failure(doing, exc) from None

    def failure(self, doing: str, exc: BaseException) -> DbtStateStoreException:
        """The store's error as ours: the URL, what went wrong, how to fix it (no secret)."""
        text = redact(f"{type(exc).__name__}: {exc}", self.secrets)
        lowered = text.lower()
        if any(w in lowered for w in ("nosuchbucket", "bucket does not exist", "specified bucket")):
            fix = "the bucket does not exist: create it, or fix the bucket in state_store"
        elif any(w in lowered for w in ("accessdenied", "access denied", "invalidaccesskeyid", "forbidden",
                                        "signaturedoesnotmatch", "expiredtoken", "permission", "403")):
            fix = ("the store refused the credentials: check the state_store_conn_id connection's keys "
                   "and that they may list, get, put and delete under this prefix")
        elif any(w in lowered for w in ("could not connect", "connect timeout", "endpoint", "timed out",
                                        "connection refused", "name or service not known", "connecterror",
                                        "connectionerror", "timeout")):
            fix = ("the endpoint cannot be reached: check the network and the connection's endpoint_url "
                   "(extra) or region")
        else:
            fix = "check the state_store URL and its connection"
        return DbtStateStoreException(f"State store {self.url}: {doing} failed ({text}); {fix}")

    def check(self) -> None:
        """Fail now, with the URL and the fix, if the bucket is missing, refuses us or cannot be reached."""
        bucket = self.base.split("/", 1)[0]
        self._count("list")
        with self._errors("listing the bucket", missing="bucket"):
            self.fs.ls(bucket, detail=False, refresh=True)

    def put(self, data: bytes, *parts: str) -> None:
        self._count("put")
        with self._errors(f"writing {'/'.join(parts)}", missing="bucket"):
            self.fs.pipe_file(self.path(*parts), data)

    def put_json(self, value: Any, *parts: str) -> None:
        self.put(json.dumps(value).encode(), *parts)

    def get(self, *parts: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        self._count("get")
        path = self.path(*parts)
        self.fs.invalidate_cache(path)  # its dir's cached listing may predate the object (another writer)
        try:
            with self._errors(f"reading {'/'.join(parts)}"):
                data: bytes = self.fs.cat_file(path)
                return data
        except FileNotFoundError:
            return None

    def get_json(self, *parts: str) -> Any:
        data = self.get(*parts)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None

    def listing(self, *parts: str) -> dict[str, str]:
        """Every object below ``parts``: its key relative to them -> its version tag (ETag and size)."""
        return {key: info.tag for key, info in self.objects(*parts).items()}

    def objects(self, *parts: str) -> dict[str, ObjectInfo]:
        """Every object below ``parts``: its key relative to them -> its version tag and modification time."""
        prefix = self.path(*parts)
        # All of it: s3fs caches the listings of the dirs below too, and would then answer a get of an
        # object another process wrote since with "not found", without asking the store.
        self.fs.invalidate_cache()
        try:
            with self._errors(f"listing {'/'.join(parts)}"):
                found = self.fs.find(prefix, detail=True)
        except FileNotFoundError:
            found = {}
        self._count("list", max(1, -(-len(found) // LIST_PAGE)))
        out: dict[str, ObjectInfo] = {}
        for key, info in found.items():
            rel = str(key)[len(prefix):].lstrip("/")
            if rel and info.get("type", "file") == "file":
                modified = info.get("LastModified") or info.get("mtime") or 0.0
                modified = modified.timestamp() if isinstance(modified, datetime) else float(modified)
                tag = info.get("ETag") or info.get("etag") or modified
                out[rel] = ObjectInfo(f"{tag}:{info.get('size')}", modified)
        return out

    def remove(self, *parts: str) -> None:
        """Remove every object below ``parts`` (nothing there is fine)."""
        self._count("delete")
        try:
            with self._errors(f"removing {'/'.join(parts)}"):
                self.fs.rm(self.path(*parts), recursive=True)
        except FileNotFoundError:
            pass


def store_from_env(url: str, protocol: str) -> StateStore:
    """The store of a detached supervisor: options (credentials included) from its environment only.

    Takes the options out of ``os.environ`` so that no process started from here (dbt) inherits them.
    """
    fsspec: Any = importlib.import_module("fsspec")  # untyped; and only a supervisor with a store needs it
    raw = os.environ.pop(STORE_OPTIONS_ENV, None)
    options: dict[str, Any] = json.loads(raw) if raw else {}
    secrets = [str(options.get(k) or "") for k in ("key", "secret", "token")]
    fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
    return StateStore(fs, url, secrets)
