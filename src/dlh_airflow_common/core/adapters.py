"""The table of dbt adapters: which profile key comes from which connection field, and which are secret.

Every key here is checked against the adapter's own dbt plugin by ``tests/test_adapter_plugins.py``
(dbt parses a project with the rendered profile), so a key dbt does not know fails a test, not a run.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dlh_airflow_common.core.exceptions import DbtProfileException

if TYPE_CHECKING:
    from dlh_airflow_common.core.profiles import ConnectionInfo, Secrets

@dataclass(frozen=True)
class Field:
    """One key of the dbt profile: where it comes from, in order of preference."""

    key: str
    sources: tuple[str, ...] = ()
    required: bool = False
    secret: bool = False
    default: Any = None
    convert: Callable[[Any], Any] | None = None

    def hint(self) -> str:
        names = [s.replace("extra.", "extra field '") + ("'" if s.startswith("extra.") else "") for s in
                 self.sources]
        return " or ".join(names) or "a constant"


Derive = Callable[[dict[str, Any], "ConnectionInfo", "Secrets"], None]


@dataclass(frozen=True)
class AdapterSpec:
    """How one dbt adapter's profile is built from a connection."""

    dbt_type: str
    conn_types: tuple[str, ...]
    fields: tuple[Field, ...]
    schema_key: str = "schema"
    derive: Derive | None = None  # keys that depend on several fields (auth method, key-pair passphrase)


def _to_int(value: Any) -> int:
    return int(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _json_object(value: Any) -> dict[str, Any]:
    """A mapping given as a dict or as JSON text (Airflow's form stores extras as text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object of name: value")
    return value


def _private_key_text(value: Any) -> str:
    """PEM text, or base64 DER, as dbt-snowflake reads it.

    Airflow's Snowflake connection holds ``private_key_content`` as base64 of the PEM file (older
    providers: the PEM text itself); dbt-snowflake would read base64 as DER, so PEM is unwrapped here.
    """
    text = str(value).strip()
    if text.startswith("-----BEGIN"):
        return text
    try:
        decoded = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("private key content is neither PEM text nor base64") from None
    if decoded.lstrip().startswith(b"-----BEGIN"):
        return decoded.decode("ascii").strip()
    return text  # base64 of a DER key: dbt-snowflake reads that form itself


def _host_name(value: Any) -> str:
    """Databricks wants the bare workspace host; Airflow connections often carry the URL."""
    return re.sub(r"^https?://", "", str(value).strip()).rstrip("/")


_THREADS = Field("threads", ("extra.threads",), default=4, convert=_to_int)
_PG_COMMON = (
    Field("host", ("host",), required=True),
    Field("password", ("password",), secret=True),
    Field("dbname", ("extra.dbname", "extra.database", "schema"), required=True),
    Field("schema", ("extra.schema",), default="public"),
    _THREADS,
    Field("sslmode", ("extra.sslmode",)),
    Field("connect_timeout", ("extra.connect_timeout",), convert=_to_int),
    Field("role", ("extra.role",)),
    Field("retries", ("extra.retries",), convert=_to_int),
)


def _fail(conn: ConnectionInfo, dbt_type: str, message: str) -> DbtProfileException:
    return DbtProfileException(f"Connection {conn.conn_id!r} ({dbt_type}): {message}")


def _redshift_method(profile: dict[str, Any], conn: ConnectionInfo, secrets: Secrets) -> None:
    """IAM auth (``extra.iam`` true or ``extra.method`` iam) takes temporary credentials, no password."""
    method = str(conn.get("extra.method") or "").lower()
    if method == "iam" or _to_bool(conn.get("extra.iam") or False):
        profile["method"] = "iam"
        if "password" in profile:
            del profile["password"]
            secrets.pop("password")
        if not profile.get("cluster_id"):
            raise _fail(conn, "redshift", "IAM auth needs the cluster: set extra field 'cluster_identifier' "
                                          "(or 'cluster_id')")
    else:
        for key in ("cluster_id", "iam_profile"):
            if key in profile:
                raise _fail(conn, "redshift", f"{key!r} is set but IAM auth is not: set extra field 'iam' "
                                              "to true, or remove it")


def _snowflake_auth(profile: dict[str, Any], conn: ConnectionInfo, secrets: Secrets) -> None:
    """Key-pair auth: as in Airflow, the connection's password is then the key's passphrase."""
    if "private_key" in profile and "private_key_path" in profile:
        raise _fail(conn, "snowflake", "both extra fields 'private_key_content' and 'private_key_file' are "
                                       "set; keep only one")
    if ("private_key" in profile or "private_key_path" in profile) and "password" in profile:
        passphrase = secrets.pop("password")
        del profile["password"]
        if "private_key_passphrase" not in profile:
            profile["private_key_passphrase"] = secrets.ref("private_key_passphrase", passphrase)
    region = conn.get("extra.region")
    if region and "." not in profile["account"]:
        profile["account"] = f"{profile['account']}.{region}"  # Airflow keeps the region apart


def _bigquery_auth(profile: dict[str, Any], conn: ConnectionInfo, secrets: Secrets) -> None:
    """The auth method follows the key given; a key file's every value goes through the environment.

    Each value is its own secret: dbt hands a secret env var back as text, even through ``as_native``,
    so the key file cannot travel as one JSON secret. Its names (type, client_email, ...) stay in the file.
    """
    if "keyfile_json" in profile:
        profile["keyfile_json"] = {name: secrets.ref(f"keyfile_json_{name}", str(value))
                                   for name, value in profile["keyfile_json"].items()}
    if "keyfile_json" in profile and "keyfile" in profile:
        raise _fail(conn, "bigquery", "both extra fields 'key_path' and 'keyfile_dict' are set; "
                                      "keep only one")
    if "keyfile_json" in profile:
        profile["method"] = "service-account-json"
    elif "keyfile" in profile:
        profile["method"] = "service-account"
    else:
        profile["method"] = "oauth"  # application default credentials of the worker


def _trino_method(profile: dict[str, Any], conn: ConnectionInfo, secrets: Secrets) -> None:
    """A password means LDAP, which dbt-trino always speaks over HTTPS (it ignores http_scheme there)."""
    profile.setdefault("method", "ldap" if "password" in profile else "none")
    if profile["method"] == "ldap":
        profile.pop("http_scheme", None)


# DuckDB settings that hold credentials, beyond any name containing one of _SECRET_WORDS.
_DUCKDB_SECRET_SETTINGS = {"s3_access_key_id", "s3_secret_access_key", "s3_session_token",
                           "azure_storage_connection_string", "gcs_access_key_id", "gcs_secret_access_key"}
_SECRET_WORDS = ("secret", "password", "token")


def _duckdb_secret_settings(profile: dict[str, Any], conn: ConnectionInfo, secrets: Secrets) -> None:
    """Settings that carry credentials (S3 keys, tokens) go through the secret environment too."""
    settings = profile.get("settings")
    if not settings:
        return
    kept: dict[str, Any] = {}
    for name, value in settings.items():
        lowered = str(name).lower()
        secret = lowered in _DUCKDB_SECRET_SETTINGS or any(w in lowered for w in _SECRET_WORDS)
        if secret and value is not None:
            kept[name] = secrets.ref(f"settings_{name}", str(value))
        else:
            kept[name] = value
    profile["settings"] = kept


ADAPTERS: dict[str, AdapterSpec] = {
    spec.dbt_type: spec
    for spec in (
        AdapterSpec(
            "postgres",
            ("postgres", "postgresql"),
            (
                *_PG_COMMON,
                Field("user", ("login",), required=True),
                Field("port", ("port", "extra.port"), default=5432, convert=_to_int),
                Field("keepalives_idle", ("extra.keepalives_idle",), convert=_to_int),
                Field("search_path", ("extra.search_path",)),
            ),
        ),
        AdapterSpec(
            "redshift",
            ("redshift",),
            (
                *_PG_COMMON,
                Field("user", ("login", "extra.db_user"), required=True),  # db_user: redshift_connector's IAM
                Field("port", ("port", "extra.port"), default=5439, convert=_to_int),
                Field("cluster_id", ("extra.cluster_identifier", "extra.cluster_id")),
                Field("iam_profile", ("extra.iam_profile", "extra.profile")),
                Field("region", ("extra.region",)),
            ),
            derive=_redshift_method,
        ),
        AdapterSpec(
            "duckdb",
            ("duckdb",),
            (
                Field("path", ("extra.path", "host"), required=True),
                Field("schema", ("schema", "extra.schema"), default="main"),
                _THREADS,
                Field("extensions", ("extra.extensions",)),
                Field("settings", ("extra.settings",), convert=_json_object),
            ),
            derive=_duckdb_secret_settings,
        ),
        AdapterSpec(
            "snowflake",
            ("snowflake",),
            (
                Field("account", ("extra.account", "host"), required=True),
                Field("user", ("login",), required=True),
                Field("password", ("password",), secret=True),
                Field("private_key", ("extra.private_key_content", "extra.private_key"), secret=True,
                      convert=_private_key_text),
                Field("private_key_path", ("extra.private_key_file", "extra.private_key_path")),
                Field("private_key_passphrase", ("extra.private_key_passphrase",), secret=True),
                Field("authenticator", ("extra.authenticator",)),
                Field("role", ("extra.role",)),
                Field("database", ("extra.database",), required=True),
                Field("warehouse", ("extra.warehouse",), required=True),
                Field("schema", ("schema", "extra.schema"), required=True),
                Field("insecure_mode", ("extra.insecure_mode",), convert=_to_bool),
                _THREADS,
            ),
            derive=_snowflake_auth,
        ),
        AdapterSpec(
            "bigquery",
            ("google_cloud_platform", "gcpbigquery", "bigquery"),
            (
                Field("project", ("extra.project", "extra.project_id"), required=True),
                Field("dataset", ("schema", "extra.dataset"), required=True),
                Field("keyfile", ("extra.key_path", "extra.keyfile")),
                Field("keyfile_json", ("extra.keyfile_dict", "extra.keyfile_json"), convert=_json_object),
                Field("location", ("extra.location",)),
                Field("priority", ("extra.priority",)),
                _THREADS,
            ),
            schema_key="dataset",
            derive=_bigquery_auth,
        ),
        AdapterSpec(
            "trino",
            ("trino",),
            (
                Field("host", ("host",), required=True),
                Field("port", ("port",), default=8080, convert=_to_int),
                Field("user", ("login",), required=True),
                Field("password", ("password",), secret=True),
                Field("database", ("extra.catalog", "extra.database"), required=True),
                Field("schema", ("schema", "extra.schema"), required=True),
                Field("http_scheme", ("extra.protocol", "extra.http_scheme"), default="http"),
                _THREADS,
            ),
            derive=_trino_method,
        ),
        AdapterSpec(
            "dremio",
            ("dremio",),
            (
                Field("software_host", ("host",), required=True),
                Field("port", ("port",), default=9047, convert=_to_int),
                Field("user", ("login",), required=True),
                Field("password", ("password",), secret=True),
                Field("use_ssl", ("extra.use_ssl",), default=False, convert=_to_bool),
                Field("object_storage_source", ("extra.object_storage_source",), default="$scratch"),
                Field("object_storage_path", ("extra.object_storage_path",), default="no_schema"),
                Field("dremio_space", ("extra.dremio_space",), default="@dremio"),
                Field("dremio_space_folder", ("schema", "extra.dremio_space_folder"), default="no_schema"),
                _THREADS,
            ),
            schema_key="dremio_space_folder",
        ),
        AdapterSpec(
            "databricks",
            ("databricks",),
            (
                Field("host", ("host",), required=True, convert=_host_name),
                Field("http_path", ("extra.http_path", "extra.sql_endpoint_http_path"), required=True),
                Field("token", ("password", "extra.token"), required=True, secret=True),
                Field("catalog", ("extra.catalog",)),
                Field("schema", ("schema", "extra.schema"), required=True),
                _THREADS,
            ),
        ),
    )
}
