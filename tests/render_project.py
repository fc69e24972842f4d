"""A small generated dbt project with every case the rendering must handle.

source raw.ext_events (loaded outside dbt, with a freshness rule) -> stg_events
seed raw_events -> stg_a -> int_eph (ephemeral) -> int_x <- stg_b
int_x -> mart_1; stg_b -> mart_2; relationships(mart_2.id -> stg_a.id) has two parents on separate
branches; relationships(mart_1.id -> stg_a.id) has two parents, stg_a upstream of mart_1 (through the
ephemeral int_eph), and fails when var rel_fail is true
stg_b -> boom (fails when var boom is true) -> boom_child; stg_b -> flaky (fails until a file exists)
disabled_model is disabled. Every model has a one-parent not_null test on id.
"""

from __future__ import annotations

from pathlib import Path

import yaml

MODELS = {
    "staging/stg_events.sql": "select * from {{ source('raw', 'ext_events') }}",
    "staging/stg_a.sql": "select id, kind from {{ ref('raw_events') }}",
    "staging/stg_b.sql": "select id * 10 as id, kind from {{ ref('raw_events') }}",
    "intermediate/int_eph.sql": "{{ config(materialized='ephemeral') }}\nselect id from {{ ref('stg_a') }}",
    "intermediate/int_x.sql": "select e.id from {{ ref('int_eph') }} e join {{ ref('stg_b') }} b on b.id = e.id * 10",
    "marts/mart_1.sql": ("select count(*){% if var('rel_fail', false) %} + 100{% endif %} as id "
                         "from {{ ref('int_x') }}"),
    "marts/mart_2.sql": "select id / 10 as id from {{ ref('stg_b') }}",
    "marts/boom.sql": "select id from {{ ref('stg_b') }}\n{% if var('boom', false) %}join no_such_table on true{% endif %}",
    "marts/boom_child.sql": "select id from {{ ref('boom') }}",
    "marts/flaky.sql": ("select b.id from {{ ref('stg_b') }} b\n"
                        "{% if var('flaky', false) %}cross join read_csv('{{ env_var(\"DLH_FLAKY_CSV\", "
                        "\"/nonexistent.csv\") }}') f{% endif %}"),
    "marts/disabled_model.sql": "{{ config(enabled=false) }}\nselect 1 as id",
}
NAMES = [Path(p).stem for p in MODELS if "disabled" not in p and "eph" not in p]


def make_render_project(dest: Path) -> Path:
    """Write the project under ``dest`` (profile ``gen``); return its directory."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dbt_project.yml").write_text(yaml.safe_dump({
        "name": "gen", "version": "1.0.0", "config-version": 2, "profile": "gen",
        "models": {"gen": {"+materialized": "table", "staging": {"+materialized": "view"}}},
    }))
    (dest / "seeds").mkdir(exist_ok=True)
    (dest / "seeds" / "raw_events.csv").write_text(
        "id,kind,loaded_at\n1,a,2026-11-01 00:00:00\n2,b,2026-11-02 00:00:00\n3,a,2026-11-03 00:00:00\n")
    for rel, sql in MODELS.items():
        path = dest / "models" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sql + "\n")
    schema = {"version": 2, "models": [
        {"name": n, "columns": [{"name": "id", "data_tests": ["not_null"]}]} for n in NAMES
    ], "sources": [{"name": "raw", "schema": "main", "loaded_at_field": "loaded_at",
                    "freshness": {"warn_after": {"count": 36500, "period": "day"}},
                    "tables": [{"name": "ext_events"}]}]}
    mart_2 = next(m for m in schema["models"] if m["name"] == "mart_2")  # type: ignore[index]
    mart_2["columns"][0]["data_tests"].append(  # type: ignore[index]
        {"relationships": {"to": "ref('stg_a')", "field": "id"}})
    mart_1 = next(m for m in schema["models"] if m["name"] == "mart_1")  # type: ignore[index]
    mart_1["columns"][0]["data_tests"].append(  # type: ignore[index]
        {"relationships": {"to": "ref('stg_a')", "field": "id"}})
    (dest / "models" / "schema.yml").write_text(yaml.safe_dump(schema, sort_keys=False))
    return dest


def load_external(duckdb_path: Path) -> None:
    """What an extraction task would have landed: the source table, before any dbt run."""
    import duckdb

    con = duckdb.connect(str(duckdb_path))
    try:
        con.execute("create or replace table main.ext_events as select 1 as id, 'a' as kind, "
                    "timestamp '2026-11-01 00:00:00' as loaded_at")
    finally:
        con.close()


SLOW_SECONDS = 602  # distinct from the other smoke tests' sleeps, to tell the queries apart


def make_slow_project(dest: Path) -> Path:
    """A four-model PostgreSQL project (profile ``gen``) that stays mid-run in ``pg_sleep``.

    fast_a -> slow (``pg_sleep``) -> slow_child; fast_b stands alone: a cancelled run has built the
    fast models, and the slow pair are what waiting node tasks wait for.
    """
    models = dest / "models"
    models.mkdir(parents=True, exist_ok=True)
    (dest / "dbt_project.yml").write_text(yaml.safe_dump({
        "name": "gen", "version": "1.0.0", "config-version": 2, "profile": "gen",
        "models": {"gen": {"+materialized": "table"}}}))
    for name, sql in {"fast_a": "select 1 as id", "fast_b": "select 2 as id",
                      "slow": f"select pg_sleep({SLOW_SECONDS}) is null as slept, id from {{{{ ref('fast_a') }}}}",
                      "slow_child": "select * from {{ ref('slow') }}"}.items():
        (models / f"{name}.sql").write_text(sql + "\n")
    return dest
