"""The raw landing store: `raw_salesforce.<object>` tables in the warehouse (PostgreSQL or DuckDB).

Every business field is text (typing is dbt's job) plus `extracted_at`. One batch is one transaction:
the upserts on Id and the new watermark commit together, so a failed run leaves the raw data as it was
or fully updated. A record whose SystemModstamp did not change is left untouched (its extracted_at
too), so re-running an extraction changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from salesforce_lib.objects import OBJECTS, RAW_SCHEMA, columns_for, table_for

WATERMARKS = f"{RAW_SCHEMA}._watermarks"
TRANSFORMED = f"{RAW_SCHEMA}._transformed_watermark"  # raw watermark at the last successful dbt build


class RawStore:
    """Dialect-neutral SQL over a DB-API connection; subclasses open the connection."""

    placeholder = "%s"
    last_changed = 0  # rows the last land() inserted or changed

    @contextmanager
    def connect(self) -> Iterator[Any]:
        raise NotImplementedError

    def ensure_schema(self) -> None:
        with self.connect() as con:
            cur = con.cursor()
            cur.execute(f"create schema if not exists {RAW_SCHEMA}")
            for obj in OBJECTS:
                cols = ", ".join(f"{c} text" for c in columns_for(obj) if c != "id")
                cur.execute(f"create table if not exists {RAW_SCHEMA}.{table_for(obj)} "
                            f"(id text primary key, {cols}, extracted_at timestamptz not null)")
            cur.execute(f"create table if not exists {WATERMARKS} (object text primary key, "
                        "systemmodstamp text not null, updated_at timestamptz not null)")

    def watermark(self, obj: str) -> str | None:
        with self.connect() as con:
            cur = con.cursor()
            cur.execute(f"select systemmodstamp from {WATERMARKS} where object = {self.placeholder}", (obj,))
            row = cur.fetchone()
            return None if row is None else str(row[0])

    def land(self, obj: str, records: Iterable[dict[str, Any]], batch_size: int = 1000) -> int:
        """Upsert ``records`` and advance the watermark, all in one transaction; return rows read.

        ``last_changed`` is then the number of rows it inserted or changed."""
        columns = columns_for(obj)
        fields = OBJECTS[obj]
        now = datetime.now(UTC)
        p = self.placeholder
        updates = ", ".join(f"{c} = excluded.{c}" for c in [*columns[1:], "extracted_at"])
        table = f"{RAW_SCHEMA}.{table_for(obj)}"
        sql = (f"insert into {table} ({', '.join(columns)}, extracted_at) "
               f"values ({', '.join([p] * (len(columns) + 1))}) on conflict (id) do update set {updates} "
               f"where {table}.systemmodstamp is distinct from excluded.systemmodstamp")
        seen = 0
        newest: str | None = None
        with self.connect() as con:
            cur = con.cursor()
            batch: list[Sequence[Any]] = []
            for record in records:
                row = [_text(record.get(f)) for f in fields]
                batch.append([*row, now])
                stamp = record.get("SystemModstamp")
                if stamp and (newest is None or stamp > newest):
                    newest = stamp
                seen += 1
                if len(batch) >= batch_size:
                    cur.executemany(sql, batch)
                    batch = []
            if batch:
                cur.executemany(sql, batch)
            # rows inserted or changed now (the boundary record the inclusive watermark reads again is not)
            cur.execute(f"select count(*) from {table} where extracted_at = {p}", (now,))
            self.last_changed = int((cur.fetchone() or (0,))[0])
            if newest is not None:
                cur.execute(f"delete from {WATERMARKS} where object = {p}", (obj,))
                cur.execute(f"insert into {WATERMARKS} values ({p}, {p}, {p})", (obj, newest, now))
        return seen

    def raw_watermark(self) -> str | None:
        """The newest SystemModstamp landed in any raw table: what the dbt DAG compares against."""
        with self.connect() as con:
            cur = con.cursor()
            cur.execute(f"select max(systemmodstamp) from {WATERMARKS}")
            row = cur.fetchone()
            return None if row is None or row[0] is None else str(row[0])

    def transformed_watermark(self) -> str | None:
        """The raw watermark the last successful dbt build saw (None before the first one)."""
        with self.connect() as con:
            cur = con.cursor()
            cur.execute(f"create table if not exists {TRANSFORMED} (pipeline text primary key, "
                        "systemmodstamp text not null, updated_at timestamptz not null)")
            cur.execute(f"select systemmodstamp from {TRANSFORMED} where pipeline = 'salesforce_dbt'")
            row = cur.fetchone()
            return None if row is None else str(row[0])

    def record_transformed(self, watermark: str) -> None:
        p = self.placeholder
        with self.connect() as con:
            cur = con.cursor()
            cur.execute(f"delete from {TRANSFORMED} where pipeline = 'salesforce_dbt'")
            cur.execute(f"insert into {TRANSFORMED} values ('salesforce_dbt', {p}, {p})",
                        (watermark, datetime.now(UTC)))

    def count(self, obj: str) -> int:
        with self.connect() as con:
            cur = con.cursor()
            cur.execute(f"select count(*) from {RAW_SCHEMA}.{table_for(obj)}")
            return int(cur.fetchone()[0])


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


class PostgresStore(RawStore):
    """Connects with a libpq DSN and/or keyword parameters (these win; they need no quoting)."""

    def __init__(self, dsn: str = "", **params: Any) -> None:
        self.dsn = dsn
        self.params = params

    @contextmanager
    def connect(self) -> Iterator[Any]:
        import psycopg2

        con = psycopg2.connect(self.dsn, **self.params)
        try:
            with con:  # commit on success, roll back on any error
                yield con
        finally:
            con.close()


class DuckDbStore(RawStore):
    placeholder = "?"

    def __init__(self, path: str) -> None:
        self.path = path

    @contextmanager
    def connect(self) -> Iterator[Any]:
        import duckdb

        con = duckdb.connect(self.path)
        try:
            con.begin()
            try:
                yield _SameConnection(con)  # a DuckDB cursor is another connection: stay in this one
                con.commit()
            except BaseException:
                con.rollback()
                raise
        finally:
            con.close()


class _SameConnection:
    def __init__(self, con: Any) -> None:
        self.con = con

    def cursor(self) -> Any:
        return self.con


def store_for_connection(conn: Any) -> RawStore:
    """The store for an Airflow connection of type postgres or duckdb."""
    kind = (conn.conn_type or "").lower()
    if kind in {"postgres", "postgresql"}:
        # Keyword parameters, not a formatted DSN: a password with spaces or quotes would break one.
        return PostgresStore(host=conn.host, port=conn.port or 5432, dbname=conn.schema or "warehouse",
                             user=conn.login, password=conn.password)
    if kind == "duckdb":
        return DuckDbStore(str((conn.extra_dejson or {}).get("path") or conn.host))
    raise ValueError(f"Warehouse connection {conn.conn_id!r} has type {conn.conn_type!r}; "
                     "use a postgres or duckdb connection")
