"""What real Airflow connections carry, mapped to profile keys: key pairs, key files, IAM, old-form extras.

Whether dbt accepts these profiles is tests/test_adapter_plugins.py's job; here: which key each
connection field becomes, that every secret travels only in the environment, and the errors; and one
real DuckDB run showing that a secret nested in settings reaches the database.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from dlh_airflow_common.core import ConnectionInfo, DbtProfileException
from dlh_airflow_common.core.profiles import render_profile
from tests.adapter_plugins.cases import CASES, PEM, SA_KEY
from tests.conftest import add_model


def _render(conn: ConnectionInfo) -> tuple[dict[str, Any], dict[str, str]]:
    prof = render_profile(conn, profile_name="p", target_name="t")
    return prof.document["p"]["outputs"]["t"], prof.env


def _ref(var: str) -> str:
    return "{{ env_var('" + var + "') }}"


def _leaves(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [leaf for value in node.values() for leaf in _leaves(value)]
    return [str(node)]


@pytest.mark.parametrize("case", CASES)
def test_secrets_live_only_in_the_environment(case: str) -> None:
    prof = render_profile(CASES[case], profile_name="p", target_name="t")
    leaves = _leaves(prof.document)
    refs = {var for leaf in leaves for var in re.findall(r"env_var\('([A-Z0-9_]+)'\)", leaf)}
    assert refs == set(prof.env), "every secret env var is referenced, and only those"
    for var, value in prof.env.items():
        assert var.startswith("DBT_ENV_SECRET_")
        assert value not in leaves, f"{var}'s value is in the document"
        for line in filter(lambda line: len(line) >= 6, map(str.strip, value.splitlines())):
            assert not any(line in leaf for leaf in leaves), f"part of {var}'s value is in the document"


SNOWFLAKE = {"account": "acc", "database": "db", "warehouse": "wh"}


def test_snowflake_key_content_in_base64_reaches_dbt_as_pem_with_the_password_as_passphrase() -> None:
    out, env = _render(CASES["snowflake_key_content"])
    assert "password" not in out
    assert out["private_key"] == _ref("DBT_ENV_SECRET_PRIVATE_KEY")
    assert out["private_key_passphrase"] == _ref("DBT_ENV_SECRET_PRIVATE_KEY_PASSPHRASE")
    assert env == {"DBT_ENV_SECRET_PRIVATE_KEY": PEM.decode().strip(),
                   "DBT_ENV_SECRET_PRIVATE_KEY_PASSPHRASE": "key pass"}
    # what dbt-snowflake does with PEM text (it starts with '-'): load it with the passphrase
    key = serialization.load_pem_private_key(env["DBT_ENV_SECRET_PRIVATE_KEY"].encode(),
                                             env["DBT_ENV_SECRET_PRIVATE_KEY_PASSPHRASE"].encode())
    assert key.key_size == 2048


@pytest.mark.parametrize("content", [PEM.decode(), "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"])
def test_snowflake_pem_text_and_base64_der_pass_unchanged(content: str) -> None:
    conn = ConnectionInfo("s", "snowflake", login="u", schema="s",
                          extra={**SNOWFLAKE, "private_key_content": content,
                                 "private_key_passphrase": "pp"})
    env = _render(conn)[1]
    assert env["DBT_ENV_SECRET_PRIVATE_KEY"] == content.strip()
    assert env["DBT_ENV_SECRET_PRIVATE_KEY_PASSPHRASE"] == "pp"


def test_snowflake_explicit_passphrase_wins_and_the_password_is_not_sent() -> None:
    conn = ConnectionInfo("s", "snowflake", login="u", password="pw", schema="s",
                          extra={**SNOWFLAKE, "private_key_file": "/k.p8", "private_key_passphrase": "pp"})
    out, env = _render(conn)
    assert out["private_key_path"] == "/k.p8" and "password" not in out
    assert env == {"DBT_ENV_SECRET_PRIVATE_KEY_PASSPHRASE": "pp"}


def test_snowflake_old_form_extras_are_read_and_the_plain_key_wins() -> None:
    out, env = _render(CASES["snowflake_old_form_key_file"])
    assert (out["account"], out["database"], out["warehouse"], out["role"]) == ("acc", "db", "wh", "r")
    assert out["private_key_path"] == "/keys/rsa_key.p8"
    assert env == {"DBT_ENV_SECRET_PRIVATE_KEY_PASSPHRASE": "key pass"}
    both = ConnectionInfo("s", "snowflake", login="u", schema="s",
                          extra={**SNOWFLAKE, "extra__snowflake__account": "old"})
    assert _render(both)[0]["account"] == "acc"


def test_snowflake_region_joins_the_account() -> None:
    assert _render(CASES["snowflake_password"])[0]["account"] == "acc.eu-west-1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"private_key_content": "not a key!", "private_key_passphrase": "x"},
         r"'private_key' has an invalid value \(private key content is neither PEM text nor base64\)"),
        ({"private_key_content": base64.b64encode(PEM).decode(), "private_key_file": "/k.p8"},
         "'private_key_content' and 'private_key_file' are set; keep only one"),
    ],
)
def test_snowflake_key_errors_name_the_field(extra: dict[str, str], message: str) -> None:
    with pytest.raises(DbtProfileException, match=message):
        _render(ConnectionInfo("s", "snowflake", login="u", schema="s", extra={**SNOWFLAKE, **extra}))


def test_bigquery_key_path_is_a_service_account_keyfile() -> None:
    out, env = _render(CASES["bigquery_key_path"])
    assert (out["method"], out["keyfile"], env) == ("service-account", "/keys/sa.json", {})


def test_bigquery_keyfile_json_sends_every_value_as_a_secret() -> None:
    out, env = _render(CASES["bigquery_keyfile_json"])
    assert out["method"] == "service-account-json" and out["project"] == "p"
    assert out["keyfile_json"] == {k: _ref(f"DBT_ENV_SECRET_KEYFILE_JSON_{k.upper()}") for k in SA_KEY}
    assert env == {f"DBT_ENV_SECRET_KEYFILE_JSON_{k.upper()}": v for k, v in SA_KEY.items()}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"keyfile_dict": "{not json"}, r"'keyfile_json' has an invalid value \(not JSON"),
        ({"keyfile_dict": "[1]"}, "'keyfile_json' has an invalid value .*JSON object"),
        ({"keyfile_dict": SA_KEY, "key_path": "/sa.json"}, "'key_path' and 'keyfile_dict' are set"),
    ],
)
def test_bigquery_key_errors_name_the_field(extra: dict[str, object], message: str) -> None:
    with pytest.raises(DbtProfileException, match=message):
        _render(ConnectionInfo("b", "google_cloud_platform", schema="ds", extra={"project": "p", **extra}))


def test_redshift_iam_takes_cluster_profile_region_and_no_password() -> None:
    out, env = _render(ConnectionInfo("rs", "redshift", host="h", login="u", password="ignored", schema="dev",
                                      extra={"iam": "true", "cluster_identifier": "c", "profile": "etl",
                                             "region": "eu-west-1"}))
    assert (out["method"], out["cluster_id"], out["iam_profile"], out["region"]) == ("iam", "c", "etl",
                                                                                     "eu-west-1")
    assert "password" not in out and env == {}
    method_form, _ = _render(ConnectionInfo("rs", "redshift", host="h", schema="dev",
                                            extra={"method": "iam", "cluster_id": "c", "db_user": "etl"}))
    assert (method_form["method"], method_form["cluster_id"], method_form["user"]) == ("iam", "c", "etl")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"iam": True}, r"IAM auth needs the cluster: set extra field 'cluster_identifier'"),
        ({"cluster_identifier": "c"}, r"'cluster_id' is set but IAM auth is not: set extra field 'iam'"),
    ],
)
def test_redshift_iam_errors_say_what_to_set(extra: dict[str, object], message: str) -> None:
    with pytest.raises(DbtProfileException, match=message):
        _render(ConnectionInfo("rs", "redshift", host="h", login="u", password="pw", schema="dev",
                               extra=extra))


def test_databricks_http_path_catalog_and_bare_host() -> None:
    out, env = _render(CASES["databricks"])
    assert (out["host"], out["http_path"], out["catalog"]) == ("adb-1.azuredatabricks.net",
                                                               "/sql/1.0/warehouses/abc", "main")
    assert env == {"DBT_ENV_SECRET_TOKEN": "tok"}
    old, old_env = _render(CASES["databricks_old_form"])
    assert old["http_path"] == "/sql/1.0/warehouses/abc" and old_env == {"DBT_ENV_SECRET_TOKEN": "tok"}


def test_duckdb_settings_that_hold_credentials_go_through_the_environment() -> None:
    settings = {"s3_region": "eu-west-1", "s3_access_key_id": "AKIA1", "s3_secret_access_key": "sk",
                "s3_session_token": "st", "my_api_token": "t2", "pg_password": "p2", "threads": 2}
    out, env = _render(ConnectionInfo("k", "duckdb", host="/x.duckdb", extra={"settings": json.dumps(settings)}))
    assert out["settings"] == {
        "s3_region": "eu-west-1", "threads": 2,
        **{k: _ref(f"DBT_ENV_SECRET_SETTINGS_{k.upper()}") for k in
           ("s3_access_key_id", "s3_secret_access_key", "s3_session_token", "my_api_token", "pg_password")},
    }
    assert env == {f"DBT_ENV_SECRET_SETTINGS_{k.upper()}": str(v) for k, v in settings.items()
                   if k not in {"s3_region", "threads"}}


def test_duckdb_settings_must_be_a_mapping() -> None:
    with pytest.raises(DbtProfileException, match="'settings' has an invalid value .*JSON object"):
        _render(ConnectionInfo("k", "duckdb", host="/x.duckdb", extra={"settings": "[1, 2]"}))


def test_duckdb_secret_setting_reaches_duckdb_through_dbt(demo_project: Path, tmp_path: Path,
                                                          runtime_root: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A nested env_var() is rendered by dbt: the value DuckDB holds is the connection's, not the reference."""
    import duckdb

    from dlh_airflow_common.hooks.dbt import DbtHook

    secrets_dir = str(tmp_path / "duck secrets")  # 'secret_directory' is a core setting: no extension needed
    path = tmp_path / "wh.duckdb"
    monkeypatch.setenv("AIRFLOW_CONN_DUCK_SETTINGS", json.dumps(
        {"conn_type": "duckdb", "host": str(path), "extra": {"settings": {"secret_directory": secrets_dir}}}))
    add_model(demo_project, "setting_seen", "select current_setting('secret_directory') as value")
    hook = DbtHook(demo_project, conn_id="duck_settings", runtime_root=str(runtime_root))
    hook.run_dbt_task("deps")
    hook.run_dbt_task("run", select="setting_seen")
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("select value from main.setting_seen").fetchall() == [(secrets_dir,)]
