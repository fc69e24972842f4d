"""Connections as Airflow holds them, one per auth style of each adapter: shared by the profile tests."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dlh_airflow_common.core import ConnectionInfo


def _pem_key(passphrase: bytes) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(passphrase))


PEM = _pem_key(b"key pass")
SA_KEY = {"type": "service_account", "project_id": "sa-home", "private_key_id": "key-id-9f3",
          "client_email": "runner@sa-home.iam.gserviceaccount.com"}

# What real Airflow connections carry, one per auth style.
CASES: dict[str, ConnectionInfo] = {
    "postgres": ConnectionInfo("pg", "postgres", host="db", port=5433, login="u", password="pw",
                               schema="warehouse",
                               extra={"schema": "analytics", "sslmode": "require", "threads": "8",
                                      "connect_timeout": "10", "keepalives_idle": 30, "role": "etl",
                                      "search_path": "analytics,public", "retries": 2}),
    "redshift_password": ConnectionInfo("rs", "redshift", host="c.abc.eu-west-1.redshift.amazonaws.com",
                                        login="u", password="pw", schema="dev",
                                        extra={"sslmode": "verify-full", "connect_timeout": 10,
                                               "role": "etl", "retries": 3}),
    "redshift_iam": ConnectionInfo("rs", "redshift", host="c.abc.eu-west-1.redshift.amazonaws.com",
                                   login="u", schema="dev",
                                   extra={"iam": True, "cluster_identifier": "c", "profile": "etl",
                                          "region": "eu-west-1"}),
    "duckdb_s3": ConnectionInfo("k", "duckdb", host="/tmp/x.duckdb",
                                extra={"extensions": ["httpfs"], "schema": "raw",
                                       "settings": {"s3_region": "eu-west-1", "s3_access_key_id": "AKIA1",
                                                    "s3_secret_access_key": "sk", "s3_session_token": "st"}}),
    "snowflake_password": ConnectionInfo("s", "snowflake", login="u", password="pw", schema="s",
                                         extra={"account": "acc", "database": "db", "warehouse": "wh",
                                                "role": "r", "region": "eu-west-1",
                                                "authenticator": "snowflake", "insecure_mode": "false"}),
    "snowflake_key_content": ConnectionInfo("s", "snowflake", login="u", password="key pass", schema="s",
                                            extra={"account": "acc", "database": "db", "warehouse": "wh",
                                                   "private_key_content": base64.b64encode(PEM).decode()}),
    "snowflake_old_form_key_file": ConnectionInfo(
        "s", "snowflake", login="u", password="key pass", schema="s",
        extra={"extra__snowflake__account": "acc", "extra__snowflake__database": "db",
               "extra__snowflake__warehouse": "wh", "extra__snowflake__role": "r",
               "extra__snowflake__private_key_file": "/keys/rsa_key.p8"}),
    "bigquery_key_path": ConnectionInfo("b", "google_cloud_platform", schema="ds",
                                        extra={"project": "p", "key_path": "/keys/sa.json"}),
    "bigquery_keyfile_json": ConnectionInfo("b", "google_cloud_platform", schema="ds",
                                            extra={"extra__google_cloud_platform__project": "p",
                                                   "extra__google_cloud_platform__keyfile_dict":
                                                       json.dumps(SA_KEY), "location": "EU",
                                                   "priority": "batch"}),
    "bigquery_oauth": ConnectionInfo("b", "google_cloud_platform", schema="ds", extra={"project": "p"}),
    "trino_ldap": ConnectionInfo("t", "trino", host="h", port=443, login="u", password="pw", schema="s",
                                 extra={"catalog": "hive", "protocol": "https"}),
    "trino_none": ConnectionInfo("t", "trino", host="h", login="u", schema="s", extra={"catalog": "hive"}),
    "dremio": ConnectionInfo("d", "dremio", host="h", login="u", password="pw", schema="folder"),
    "databricks": ConnectionInfo("x", "databricks", host="https://adb-1.azuredatabricks.net/", password="tok",
                                 schema="s", extra={"http_path": "/sql/1.0/warehouses/abc", "catalog": "main"}),
    "databricks_old_form": ConnectionInfo("x", "databricks", host="adb-1.azuredatabricks.net", schema="s",
                                          extra={"extra__databricks__token": "tok",
                                                 "extra__databricks__http_path": "/sql/1.0/warehouses/abc"}),
}
