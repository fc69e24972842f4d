"""The state store from Airflow's side: its filesystem through ObjectStoragePath and the URL's connection.

Tasks and triggers open the store with :func:`open_store`. A detached supervisor cannot look up an
Airflow connection (the core never imports Airflow), so :func:`supervisor_env` hands it the
filesystem's options, credentials included, as one environment variable (``core.store``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dlh_airflow_common.core.exceptions import DbtStateStoreException
from dlh_airflow_common.core.store import S3_CLIENT_CONFIG, STORE_OPTIONS_ENV, StateStore

# Protocols whose options a detached supervisor can be given; the others serve sync producers and readers.
DETACHABLE = {"s3", "file"}


@dataclass(frozen=True)
class StoreSetting:
    """``[dlh_dbt] state_store`` and the connection its URL needs."""

    url: str
    conn_id: str | None = None

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0] if "://" in self.url else "file"


def open_store(setting: StoreSetting) -> StateStore:
    """The store through Airflow's ObjectStoragePath (its connection, its filesystem); checked.

    Raises DbtStateStoreException (URL, cause, fix; no secret) when the store cannot be used.
    """
    from airflow.sdk import ObjectStoragePath

    try:
        _connection_exists(setting)  # else the provider quietly falls back to default credentials
        fs = ObjectStoragePath(setting.url, conn_id=setting.conn_id).fs
    except Exception as exc:  # a missing connection, a protocol without its provider
        raise DbtStateStoreException(
            f"State store {setting.url}: cannot open it with connection {setting.conn_id!r} ({exc}); set "
            "state_store_conn_id to an existing connection of the URL's type (e.g. aws for s3://) and "
            "install its provider (dlh-airflow-common[s3])") from None
    store = StateStore(fs, setting.url, _secrets(setting))
    store.check()
    return store


def _connection_exists(setting: StoreSetting) -> None:
    if setting.conn_id:
        from airflow.sdk import BaseHook

        BaseHook.get_connection(setting.conn_id)


def _s3_options(setting: StoreSetting) -> dict[str, Any]:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=setting.conn_id)
    creds = hook.get_credentials()
    config = {**S3_CLIENT_CONFIG, **hook.conn_config.extra_config.get("config_kwargs", {})}
    options: dict[str, Any] = {"key": creds.access_key, "secret": creds.secret_key, "config_kwargs": config}
    if creds.token:
        options["token"] = creds.token
    endpoint = hook.conn_config.get_service_endpoint_url(service_name="s3")
    if endpoint:
        options["endpoint_url"] = endpoint
    if hook.conn_region_name:
        options["client_kwargs"] = {"region_name": hook.conn_region_name}
    return options


def _secrets(setting: StoreSetting) -> list[str]:
    if setting.protocol != "s3" or not setting.conn_id:
        return []
    try:
        options = _s3_options(setting)
    except Exception:
        return []
    return [str(options.get(k) or "") for k in ("key", "secret", "token")]


def supervisor_env(setting: StoreSetting) -> dict[str, str]:
    """The environment a detached supervisor needs to open the store (secret: environment only)."""
    if setting.protocol not in DETACHABLE:
        raise DbtStateStoreException(
            f"State store {setting.url}: a detached dbt run can write to {', '.join(sorted(DETACHABLE))} "
            f"stores only; use an s3:// store, or run the producer as a sync task (sync_producer=True)")
    options = _s3_options(setting) if setting.protocol == "s3" else {}
    return {STORE_OPTIONS_ENV: json.dumps(options)}
