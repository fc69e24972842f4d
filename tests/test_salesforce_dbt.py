"""The dbt project `salesforce` (pipelines/salesforce/dags/dbt/salesforce), built with the real dbt CLI
on DuckDB and on PostgreSQL from handcrafted raw_salesforce landing tables.

One scenario per adapter runs the builds in sequence against one warehouse and records what each step
produced (run_results.json and warehouse queries); the tests below assert on those records:

1. clean data, snapshot 2026-01-01                       -> no error, no warn
2. late edit of an old opportunity + two new records on the previous max system_modstamp,
   snapshot 2026-01-01 again                             -> intermediate and marts updated incrementally,
                                                            the day's history replaced, not duplicated
3. history only, snapshot 2026-01-02 (retention 1 day)    -> 2026-01-01 kept
4. history only, snapshot 2026-01-03                      -> 2026-01-01 dropped
5. dirty values, orphans, unknown stage, a deleted record, stale contacts, snapshot 2026-01-03 again
                                                         -> NULLs, _cast_failures, warns, build succeeds
6. `dbt source freshness`                                 -> stale contacts only warn
7. a duplicate id in raw                                  -> unique test fails the build

Steps sharing their --vars reuse dbt's partial parse (a change of vars forces a full parse).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / "pipelines" / "salesforce" / "dags" / "dbt" / "salesforce"
DBT = Path(sys.executable).with_name("dbt")  # the venv's dbt CLI (.venv/bin/dbt)
if not DBT.exists():
    DBT = Path(shutil.which("dbt") or "dbt")
PG_DATABASE = "sf_dbt_test"

RAW_COLUMNS = {
    "account": ["id", "name", "type", "industry", "annualrevenue", "numberofemployees", "billingcountry",
                "ownerid", "createddate", "systemmodstamp", "isdeleted"],
    "contact": ["id", "accountid", "firstname", "lastname", "email", "title", "leadsource", "createddate",
                "systemmodstamp", "isdeleted"],
    "opportunity": ["id", "accountid", "name", "stagename", "amount", "probability", "closedate", "type",
                    "leadsource", "forecastcategory", "isclosed", "iswon", "ownerid", "createddate",
                    "systemmodstamp", "isdeleted"],
}

T_OLD = "2026-01-01T08:00:00.000+0000"
T_MID = "2026-01-03T08:00:00.000+0000"
T_MAX = "2026-01-05T12:00:00.000+0000"  # the newest system_modstamp after the first build
T_EDIT = "2026-01-06T09:30:00.000+0000"
T_DIRTY = "2026-01-07T10:00:00.000+0000"


def account(id_: str, name: str, modstamp: str = T_OLD, **over: str | None) -> dict[str, str | None]:
    row: dict[str, str | None] = {
        "id": id_, "name": name, "type": "Customer", "industry": "Technology", "annualrevenue": "1500000.50",
        "numberofemployees": "120", "billingcountry": "DE", "ownerid": "005U1",
        "createddate": "2025-12-01T09:00:00.000+0000", "systemmodstamp": modstamp, "isdeleted": "false"}
    return {**row, **over}


def contact(id_: str, account_id: str, modstamp: str = T_OLD, **over: str | None) -> dict[str, str | None]:
    row: dict[str, str | None] = {
        "id": id_, "accountid": account_id, "firstname": "Ada", "lastname": f"Lovelace {id_}",
        "email": f"{id_.lower()}@example.com", "title": "CTO", "leadsource": "Web",
        "createddate": "2025-12-01T09:00:00.000+0000", "systemmodstamp": modstamp, "isdeleted": "false"}
    return {**row, **over}


def opportunity(id_: str, account_id: str, stage: str, amount: str, probability: str, owner: str,
                modstamp: str, **over: str | None) -> dict[str, str | None]:
    closed = stage.startswith("Closed")
    row: dict[str, str | None] = {
        "id": id_, "accountid": account_id, "name": f"Deal {id_}", "stagename": stage, "amount": amount,
        "probability": probability, "closedate": "2026-03-31", "type": "New Business",
        "leadsource": "Web", "forecastcategory": "Closed" if closed else "Pipeline",
        "isclosed": "true" if closed else "false", "iswon": "true" if stage == "Closed Won" else "false",
        "ownerid": owner, "createddate": "2025-12-15T10:15:30.000+0000", "systemmodstamp": modstamp,
        "isdeleted": "false"}
    return {**row, **over}


CLEAN = {
    "account": [account("A1", "Acme"), account("A2", "Globex", T_MID), account("A3", "Initech", T_MAX),
                account("A9", "Deleted Corp", T_MID, isdeleted="true")],
    "contact": [contact("C1", "A1"), contact("C2", "A2", T_MID), contact("C3", "A3", T_MAX)],
    "opportunity": [
        opportunity("O1", "A1", "Prospecting", "1000", "10", "005U1", T_OLD),
        opportunity("O2", "A1", "Negotiation/Review", "5000.50", "80", "005U1", T_MID),
        opportunity("O3", "A2", "Closed Won", "3000", "100", "005U2", T_MAX),
        opportunity("O4", "A3", "Qualification", "2000", "20", "005U2", T_MAX),
        opportunity("O5", "A3", "Prospecting", "999", "10", "005U2", T_MID, isdeleted="true"),
    ],
}
# Step 2: both land after the first build with exactly the previous max system_modstamp.
BOUNDARY = [opportunity("O6", "A2", "Qualification", "700", "20", "005U2", T_MAX),
            opportunity("O7", "A3", "Qualification", "300", "20", "005U2", T_MAX)]
# Step 5: dirty values (each row's expected cast failures in the comment).
DIRTY = {
    "account": [
        # valid edge values: exponent, padded integer, leap day, Z and +01:00 offsets -> 0 failures
        account("A4", "Edge Values", "2026-01-07 11:00:00+01:00", annualrevenue="1.5E3",
                numberofemployees=" 42 ", createddate="2024-02-29T23:59:59Z"),
        # 12.5 employees, 'n/a' revenue, 2023-02-29 -> 3 failures
        account("A5", "Bad Values", T_DIRTY, annualrevenue="n/a", numberofemployees="12.5",
                createddate="2023-02-29T00:00:00.000+0000"),
    ],
    "contact": [contact("C4", "A404", "yesterday")],  # orphan, unusable system_modstamp: 1 failure
    "opportunity": [
        opportunity("O8", "A1", "Prospecting", "12O0", "10", "005U1", T_DIRTY),  # 1 failure
        opportunity("O9", "A1", "Prospecting", "100", "10", "005U1", T_DIRTY, closedate="2026-02-30"),  # 1
        opportunity("O10", "A2", "Negotiation", "100", "", "005U2", T_DIRTY, closedate="not a date"),  # 1
        opportunity("O11", "A404", "Qualification", "100", "20", "005U2", T_DIRTY,  # orphan, 1 failure
                    createddate="2026-01-07T25:00:00.000+0000"),
    ],
}


def sql_literal(value: str | None) -> str:
    return "null" if value is None else "'" + value.replace("'", "''") + "'"


def insert_sql(table: str, rows: list[dict[str, str | None]]) -> str:
    cols = RAW_COLUMNS[table]
    values = ",\n".join("(" + ", ".join([*(sql_literal(r[c]) for c in cols), "current_timestamp"]) + ")"
                        for r in rows)
    return f"insert into raw_salesforce.{table} ({', '.join(cols)}, extracted_at) values {values}"


class Warehouse:
    """The target database: raw tables are created and changed here, the models are queried here."""

    name: str

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def profile(self) -> dict[str, Any]:
        raise NotImplementedError

    def create_raw(self) -> None:
        self.execute("create schema raw_salesforce")
        for table, cols in RAW_COLUMNS.items():
            # No primary key on purpose: step 6 lands a duplicate id.
            self.execute(f"create table raw_salesforce.{table} ({', '.join(c + ' text' for c in cols)}, "
                         "extracted_at timestamp with time zone)")


class DuckWarehouse(Warehouse):
    name = "duckdb"

    def __init__(self, path: Path) -> None:
        self.path = path

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        import duckdb

        with duckdb.connect(str(self.path)) as con:  # closed before dbt opens the file
            cur = con.execute(sql)
            return cur.fetchall() if cur.description else []

    def profile(self) -> dict[str, Any]:
        return {"type": "duckdb", "path": str(self.path), "schema": "main", "threads": 4}


class PgWarehouse(Warehouse):
    name = "postgres"

    def __init__(self, server: Any) -> None:
        self.server = server
        server.execute(f"drop database if exists {PG_DATABASE}")
        server.execute(f"create database {PG_DATABASE}")

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.server.execute(sql, dbname=PG_DATABASE))

    def profile(self) -> dict[str, Any]:
        return {"type": "postgres", "host": "127.0.0.1", "port": self.server.port,
                "user": self.server.superuser, "password": self.server.password, "dbname": PG_DATABASE,
                "schema": "public", "threads": 4}


@dataclass
class DbtRun:
    args: list[str]
    returncode: int
    output: str
    results: list[dict[str, Any]]
    invocation_id: str | None

    def statuses(self) -> dict[str, str]:
        """unique_id -> status (success/error/skipped for models, pass/warn/fail/error for tests)."""
        return {r["unique_id"]: r["status"] for r in self.results}

    def with_status(self, *statuses: str) -> set[str]:
        return {uid for uid, status in self.statuses().items() if status in statuses}

    def status_of(self, name: str) -> str:
        matches = [s for uid, s in self.statuses().items() if uid.split(".")[2] == name]
        assert len(matches) == 1, (name, self.statuses())
        return matches[0]

    def describe(self) -> str:
        return f"dbt {' '.join(self.args)} -> rc {self.returncode}\n{self.output[-6000:]}"


@dataclass
class Scenario:
    backend: str
    runs: dict[str, DbtRun] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


def run_dbt(project: Path, profiles: Path, *args: str, dbt_vars: dict[str, Any] | None = None) -> DbtRun:
    cmd = [str(DBT), *args, "--project-dir", str(project), "--profiles-dir", str(profiles)]
    if dbt_vars is not None:
        cmd += ["--vars", json.dumps(dbt_vars)]
    results_file = project / "target" / ("sources.json" if args[:2] == ("source", "freshness")
                                         else "run_results.json")
    results_file.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBT_")}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    doc = json.loads(results_file.read_text()) if results_file.exists() else {}
    return DbtRun(list(args) + ([json.dumps(dbt_vars)] if dbt_vars else []), proc.returncode,
                  proc.stdout + proc.stderr, doc.get("results", []),
                  doc.get("metadata", {}).get("invocation_id"))


def history_vars(day: str) -> dict[str, Any]:
    return {"snapshot_date": day, "history_retention_days": 1}


def capture(wh: Warehouse, sc: Scenario, step: str) -> None:
    """What the dashboards and the tests look at, after a step."""
    q = wh.execute
    sc.data[step] = {
        "int_opps": {r[0]: r[1:] for r in q(
            "select opportunity_id, amount, stage_name, system_modstamp, _invocation_id, _loaded_at "
            "from intermediate.int_salesforce__opportunities_current")},
        "fct": {r[0]: r[1:] for r in q(
            "select opportunity_id, amount, stage_name, account_name, weighted_amount, is_open "
            "from marts.fct_salesforce__opportunities")},
        "pipeline": {(r[0], r[1]): r[2:] for r in q(
            "select stage_name, owner_id, opportunity_count, total_amount, weighted_amount "
            "from marts.mart_salesforce__pipeline_by_stage_owner")},
        "history": q("select snapshot_date, opportunity_id, amount, stage_name "
                     "from marts.fct_salesforce__opportunity_history order by 1, 2"),
        "monitor_runs": {r[0]: r[1] for r in q(
            "select invocation_id, count(*) from marts.monitor_salesforce__volume_distribution "
            "group by invocation_id")},
    }


def run_scenario(wh: Warehouse, workdir: Path) -> Scenario:
    project = workdir / "salesforce"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    profiles = workdir / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(json.dumps(
        {"salesforce": {"target": "test", "outputs": {"test": wh.profile()}}}))
    sc = Scenario(wh.name)
    wh.create_raw()
    for table, rows in CLEAN.items():
        wh.execute(insert_sql(table, rows))

    # 1. clean data
    sc.runs["clean"] = run_dbt(project, profiles, "build", dbt_vars=history_vars("2026-01-01"))
    capture(wh, sc, "clean")
    sc.data["clean"]["stg_opps"] = {r[0]: r[1:] for r in wh.execute(
        "select opportunity_id, amount, probability, close_date, is_closed, is_won, created_date, "
        "system_modstamp, _cast_failures from staging.stg_salesforce__opportunities")}
    sc.data["clean"]["dim_accounts"] = {r[0]: r[1:] for r in wh.execute(
        "select account_id, annual_revenue, number_of_employees, contact_count, opportunity_count "
        "from marts.dim_salesforce__accounts")}

    # 2. a late edit of the oldest opportunity, and two records on the previous max system_modstamp
    wh.execute("update raw_salesforce.opportunity set amount = '1500', stagename = 'Value Proposition', "
               f"probability = '50', systemmodstamp = '{T_EDIT}', extracted_at = current_timestamp "
               "where id = 'O1'")
    wh.execute(insert_sql("opportunity", BOUNDARY))
    sc.runs["incremental"] = run_dbt(project, profiles, "build", dbt_vars=history_vars("2026-01-01"))
    capture(wh, sc, "incremental")

    # 3./4. the history alone on the next two days (retention 1 day drops 2026-01-01 on 2026-01-03)
    history_only = ("build", "--select", "tag:history", "tag:info")
    sc.runs["history"] = run_dbt(project, profiles, *history_only, dbt_vars=history_vars("2026-01-02"))
    capture(wh, sc, "history")
    sc.runs["history_retention"] = run_dbt(project, profiles, *history_only,
                                           dbt_vars=history_vars("2026-01-03"))
    capture(wh, sc, "history_retention")

    # 5. dirty values, O7 deleted in Salesforce; contacts also go stale (for step 6)
    for table, rows in DIRTY.items():
        wh.execute(insert_sql(table, rows))
    wh.execute(f"update raw_salesforce.opportunity set isdeleted = 'true', systemmodstamp = '{T_DIRTY}' "
               "where id = 'O7'")
    wh.execute("update raw_salesforce.contact set extracted_at = current_timestamp - interval '3 days'")
    sc.runs["dirty"] = run_dbt(project, profiles, "build", dbt_vars=history_vars("2026-01-03"))
    capture(wh, sc, "dirty")
    sc.data["dirty"]["stg_opps"] = {r[0]: r[1:] for r in wh.execute(
        "select opportunity_id, amount, close_date, probability, created_date, _cast_failures "
        "from staging.stg_salesforce__opportunities")}
    sc.data["dirty"]["stg_accounts"] = {r[0]: r[1:] for r in wh.execute(
        "select account_id, annual_revenue, number_of_employees, created_date, system_modstamp, "
        "_cast_failures from staging.stg_salesforce__accounts")}
    sc.data["dirty"]["int_contacts"] = {r[0]: r[1:] for r in wh.execute(
        "select contact_id, system_modstamp, _cast_failures from intermediate.int_salesforce__contacts_current")}
    sc.runs["freshness"] = run_dbt(project, profiles, "source", "freshness",
                                   dbt_vars=history_vars("2026-01-03"))

    # 7. a duplicate id lands in raw
    wh.execute(insert_sql("opportunity", [opportunity("O2", "A1", "Closed Lost", "1", "0", "005U1", T_DIRTY)]))
    sc.runs["duplicate"] = run_dbt(project, profiles, "build", dbt_vars=history_vars("2026-01-03"))
    capture(wh, sc, "duplicate")
    return sc


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def scenario(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    workdir = tmp_path_factory.mktemp(f"sf_dbt_{request.param}")
    if request.param == "duckdb":
        wh: Warehouse = DuckWarehouse(workdir / "warehouse.duckdb")  # database name: warehouse
    else:
        wh = PgWarehouse(request.getfixturevalue("pg"))
    yield run_scenario(wh, workdir)
    if isinstance(wh, PgWarehouse):
        wh.server.execute(f"drop database if exists {PG_DATABASE}")


def test_clean_data_builds_without_error_or_warn(scenario: Scenario) -> None:
    run = scenario.runs["clean"]
    assert run.returncode == 0, run.describe()
    assert run.with_status("error", "fail", "warn", "skipped") == set(), run.describe()
    statuses = run.statuses()
    assert sum(uid.startswith("model.") for uid in statuses) == 12
    assert sum(uid.startswith("test.") for uid in statuses) >= 30
    assert "deprecat" not in run.output.lower(), run.describe()  # dbt 1.10+ yml syntax throughout
    # the second full build on still clean data (plus the two boundary records) is clean too
    assert scenario.runs["incremental"].returncode == 0, scenario.runs["incremental"].describe()
    assert scenario.runs["incremental"].with_status("error", "fail", "warn", "skipped") == set()


def test_staging_casts_by_type_policy(scenario: Scenario) -> None:
    stg = scenario.data["clean"]["stg_opps"]
    assert set(stg) == {"O1", "O2", "O3", "O4"}  # O5 is deleted in Salesforce
    amount, probability, close_date, is_closed, is_won, created, modstamp, failures = stg["O2"]
    assert (amount, probability) == (Decimal("5000.50"), Decimal(80))
    assert close_date == date(2026, 3, 31)
    assert (is_closed, is_won) == (False, False)
    assert stg["O3"][3:5] == (True, True)
    assert created == datetime(2025, 12, 15, 10, 15, 30, tzinfo=UTC)
    assert modstamp == datetime(2026, 1, 3, 8, tzinfo=UTC)
    assert failures == 0
    accounts = scenario.data["clean"]["dim_accounts"]
    assert set(accounts) == {"A1", "A2", "A3"}
    assert accounts["A1"] == (Decimal("1500000.50"), 120, 1, 2)


def test_marts_after_the_first_build(scenario: Scenario) -> None:
    data = scenario.data["clean"]
    assert data["fct"]["O2"] == (Decimal("5000.50"), "Negotiation/Review", "Acme", Decimal("4000.40"), True)
    assert data["fct"]["O3"][3:] == (Decimal(3000), False)
    assert data["pipeline"] == {
        ("Prospecting", "005U1"): (1, Decimal(1000), Decimal(100)),
        ("Negotiation/Review", "005U1"): (1, Decimal("5000.50"), Decimal("4000.40")),
        ("Qualification", "005U2"): (1, Decimal(2000), Decimal(400)),
    }


def test_late_edit_replaces_the_old_version_and_leaves_unchanged_rows(scenario: Scenario) -> None:
    before, after = scenario.data["clean"], scenario.data["incremental"]
    assert before["int_opps"]["O1"][:2] == (Decimal(1000), "Prospecting")
    assert after["int_opps"]["O1"][:3] == (Decimal(1500), "Value Proposition",
                                           datetime(2026, 1, 6, 9, 30, tzinfo=UTC))
    assert after["fct"]["O1"][:2] == (Decimal(1500), "Value Proposition")
    assert after["pipeline"][("Value Proposition", "005U1")] == (1, Decimal(1500), Decimal(750))
    assert ("Prospecting", "005U1") not in after["pipeline"]
    # O2 is older than the previous max system_modstamp: not re-read, the row written by build 1 stays
    assert after["int_opps"]["O2"] == before["int_opps"]["O2"]
    assert after["fct"]["O2"] == before["fct"]["O2"]
    assert after["pipeline"][("Negotiation/Review", "005U1")] == before["pipeline"][("Negotiation/Review", "005U1")]
    rewritten = {k for k in after["int_opps"] if after["int_opps"][k][3] != before["int_opps"].get(k, (0,) * 5)[3]}
    # the late edit, the boundary rows (>=) and the two new records; nothing older
    assert rewritten == {"O1", "O3", "O4", "O6", "O7"}


def test_records_on_the_previous_max_modstamp_are_picked_up(scenario: Scenario) -> None:
    after = scenario.data["incremental"]
    for opp in ("O6", "O7"):
        assert after["int_opps"][opp][2] == datetime(2026, 1, 5, 12, tzinfo=UTC)
        assert opp in after["fct"]
    assert after["pipeline"][("Qualification", "005U2")] == (3, Decimal(3000), Decimal(600))


def test_history_snapshots_retention_and_same_day_rerun(scenario: Scenario) -> None:
    def days(step: str) -> dict[date, int]:
        counts: dict[date, int] = {}
        for row in scenario.data[step]["history"]:
            counts[row[0]] = counts.get(row[0], 0) + 1
        return counts

    def day(step: str, snapshot: date) -> dict[str, tuple[Any, ...]]:
        return {r[1]: r[2:] for r in scenario.data[step]["history"] if r[0] == snapshot}

    jan1, jan2, jan3 = date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)
    assert days("clean") == {jan1: 4}
    assert day("clean", jan1)["O1"] == (Decimal(1000), "Prospecting")
    # same-day re-run: the day's rows are replaced (late edit, two new records), not duplicated
    assert days("incremental") == {jan1: 6}
    assert day("incremental", jan1)["O1"] == (Decimal(1500), "Value Proposition")
    for step in ("history", "history_retention"):
        run = scenario.runs[step]
        assert run.returncode == 0, run.describe()
        assert run.with_status("error", "fail", "warn", "skipped") == set(), run.describe()
        assert run.status_of("fct_salesforce__opportunity_history") == "success"
    # retention 1 day: on 2026-01-02 the day before is kept, on 2026-01-03 2026-01-01 is dropped
    assert days("history") == {jan1: 6, jan2: 6}
    assert days("history_retention") == {jan2: 6, jan3: 6}
    # re-running 2026-01-03 after the dirty data landed: 4 new opportunities, O7 deleted
    assert days("dirty") == {jan2: 6, jan3: 9}
    assert "O7" in day("dirty", jan2) and "O7" not in day("dirty", jan3)


def test_dirty_values_become_null_are_counted_and_warn(scenario: Scenario) -> None:
    run = scenario.runs["dirty"]
    assert run.returncode == 0, run.describe()
    assert run.with_status("error", "fail", "skipped") == set(), run.describe()
    stg = scenario.data["dirty"]["stg_opps"]
    assert stg["O8"][0] is None and stg["O8"][-1] == 1  # amount '12O0'
    assert stg["O9"][1] is None and stg["O9"][-1] == 1  # closedate 2026-02-30
    assert stg["O10"][1:3] == (None, None) and stg["O10"][-1] == 1  # 'not a date'; blank probability is no failure
    assert stg["O11"][3] is None and stg["O11"][-1] == 1  # hour 25
    assert stg["O1"][-1] == 0
    accounts = scenario.data["dirty"]["stg_accounts"]
    assert accounts["A4"] == (Decimal(1500), 42, datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
                              datetime(2026, 1, 7, 10, tzinfo=UTC), 0)
    assert accounts["A5"][:3] == (None, None, None) and accounts["A5"][-1] == 3
    # a record without a usable system_modstamp still reaches the current state (and is re-read every run)
    assert scenario.data["dirty"]["int_contacts"]["C4"] == (None, 1)
    # bad values stay NULL downstream, orphans are kept with no account name
    fct = scenario.data["dirty"]["fct"]
    assert fct["O8"][0] is None and fct["O11"][2] is None
    # a record deleted in Salesforce leaves the current-state tables and the marts
    assert "O7" in scenario.data["history_retention"]["int_opps"]
    assert "O7" not in scenario.data["dirty"]["int_opps"] and "O7" not in fct
    warned = {uid.split(".")[2] for uid in run.with_status("warn")}
    assert {
        "cast_failure_rate_stg_salesforce__opportunities_0_01",
        "cast_failure_rate_stg_salesforce__accounts_0_01",
        "cast_failure_rate_stg_salesforce__contacts_0_01",
    } <= warned
    prefixes = ("accepted_values_stg_salesforce__opportunities_stage_name",
                "accepted_values_fct_salesforce__opportunities_stage_name",
                "relationships_stg_salesforce__contacts_account_id",
                "relationships_stg_salesforce__opportunities_account_id",
                "relationships_dim_salesforce__contacts_account_id",
                "relationships_fct_salesforce__opportunities_account_id")
    for prefix in prefixes:
        assert any(name.startswith(prefix) for name in warned), (prefix, warned)


def test_source_freshness_is_soft(scenario: Scenario) -> None:
    run = scenario.runs["freshness"]
    assert run.returncode == 0, run.describe()
    assert {r["unique_id"].split(".")[-1]: r["status"] for r in run.results} == {
        "account": "pass", "contact": "warn", "opportunity": "pass"}


def test_duplicate_raw_id_fails_the_build(scenario: Scenario) -> None:
    run = scenario.runs["duplicate"]
    assert run.returncode == 1, run.describe()
    assert run.status_of("unique_stg_salesforce__opportunities_opportunity_id") == "fail"
    assert run.status_of("int_salesforce__opportunities_current") == "skipped"
    assert run.status_of("fct_salesforce__opportunities") == "skipped"
    assert run.with_status("error") == set(), run.describe()
    # nothing downstream changed: the last good state stays
    assert scenario.data["duplicate"]["fct"] == scenario.data["dirty"]["fct"]


def test_info_monitor_records_every_run_and_never_fails(scenario: Scenario) -> None:
    steps = ["clean", "incremental", "history", "history_retention", "dirty", "duplicate"]
    for step in steps:
        run = scenario.runs[step]
        assert run.status_of("monitor_salesforce__volume_distribution") == "success", run.describe()
    monitor = scenario.data["duplicate"]["monitor_runs"]
    assert set(monitor) == {scenario.runs[step].invocation_id for step in steps}
    assert all(n >= 15 for n in monitor.values())
    # a run's rows appear with the run, earlier runs' rows are kept
    assert set(scenario.data["clean"]["monitor_runs"]) == {scenario.runs["clean"].invocation_id}
