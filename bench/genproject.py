"""Generate a synthetic, source-less dbt project on DuckDB for parse benchmarks."""

from __future__ import annotations

import random
from pathlib import Path

import yaml

PROFILE_NAME = "bench"


def model_name(index: int) -> str:
    """The name of model number ``index``."""
    return f"m_{index:03d}"


def _model_sql(index: int, per_layer: int, rng: random.Random) -> str:
    """SQL for one model: a literal in the first layer, 1-2 refs to earlier layers after that."""
    if index < per_layer:
        return f"select {index} as id, 'seed_{index}' as label\n"
    earlier = index - index % per_layer  # first model of this layer: everything before is earlier
    parents = sorted(rng.sample(range(earlier), k=min(earlier, rng.choice((1, 2)))))
    selects = [f"select id, label from {{{{ ref('{model_name(p)}') }}}}" for p in parents]
    return "\nunion all\n".join(selects) + "\n"


def _schema(layer_models: list[str], tests_per_layer: int, unique: bool = True) -> dict[str, object]:
    """A schema.yml documenting every model of a layer and testing a few of them."""
    models: list[dict[str, object]] = []
    for position, name in enumerate(layer_models):
        entry: dict[str, object] = {"name": name, "description": f"Benchmark model {name}."}
        if position < tests_per_layer:
            entry["columns"] = [
                {"name": "id", "data_tests": ["not_null", "unique"] if unique else ["not_null"]},
                {"name": "label", "data_tests": ["not_null"]},
            ]
        models.append(entry)
    return {"version": 2, "models": models}


def generate_project(dest: Path, models: int = 500, layers: int = 10, tests_per_layer: int = 3,
                     seed: int = 42, unique_tests: bool = True) -> Path:
    """Write a dbt project with ``models`` models in ``layers`` folders under ``dest``; return it.

    ``unique_tests=False`` for projects that are built: a union of parents repeats ids, so ``unique`` fails.
    """
    rng = random.Random(seed)
    per_layer = max(1, models // layers)
    dest.mkdir(parents=True, exist_ok=True)
    project = {
        "name": "bench_project",
        "version": "1.0.0",
        "config-version": 2,
        "profile": PROFILE_NAME,
        "model-paths": ["models"],
        "models": {"bench_project": {"+materialized": "view"}},
    }
    (dest / "dbt_project.yml").write_text(yaml.safe_dump(project, sort_keys=False))
    for layer_start in range(0, models, per_layer):
        folder = dest / "models" / f"layer_{layer_start // per_layer:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        names = [model_name(i) for i in range(layer_start, min(models, layer_start + per_layer))]
        for index, name in enumerate(names, start=layer_start):
            (folder / f"{name}.sql").write_text(_model_sql(index, per_layer, rng))
        schema = _schema(names, tests_per_layer, unique_tests)
        (folder / "schema.yml").write_text(yaml.safe_dump(schema, sort_keys=False))
    return dest


def write_profiles(profiles_dir: Path, duckdb_path: Path) -> Path:
    """Write a profiles.yml pointing the ``bench`` profile at a DuckDB file; return the dir."""
    profiles_dir.mkdir(parents=True, exist_ok=True)
    profile = {PROFILE_NAME: {"target": "dev", "outputs": {
        "dev": {"type": "duckdb", "path": str(duckdb_path), "schema": "main", "threads": 1}}}}
    (profiles_dir / "profiles.yml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return profiles_dir
