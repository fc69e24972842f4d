"""A synthetic but realistic dbt manifest, and the project files it stands for, without running dbt.

Parsing 5,000 models with dbt takes minutes; rendering benchmarks only need what dbt writes. Nodes
carry the fields a dbt 1.11 ``manifest.json`` has (config, columns, raw_code, checksums, ...), so
readers that load the whole manifest pay a realistic size. Shape: a few sources (with freshness) and
seeds; models in layers referencing 1-3 earlier models (the first layer reads sources and seeds);
``not_null``/``unique`` tests on every model and a two-parent ``relationships`` test on every third.
The project directory gets one ``.sql`` per model and a ``schema.yml`` per layer, so anything that
hashes the project (a cache key) hashes a project of the right size.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

PROJECT = "bench_render"
ADAPTER = "postgres"
LAYERS = 10
SEEDS = 5
SOURCES = 8


def _checksum(text: str) -> dict[str, str]:
    return {"name": "sha256", "checksum": hashlib.sha256(text.encode()).hexdigest()}


def _config(materialized: str, **extra: Any) -> dict[str, Any]:
    """The config block dbt writes for every node (most keys at their defaults)."""
    return {"enabled": True, "alias": None, "schema": None, "database": None, "tags": [], "meta": {},
            "group": None, "materialized": materialized, "incremental_strategy": None, "batch_size": None,
            "lookback": 1, "begin": None, "persist_docs": {}, "post-hook": [], "pre-hook": [],
            "quoting": {}, "column_types": {}, "full_refresh": None, "unique_key": None,
            "on_schema_change": "ignore", "on_configuration_change": "apply", "grants": {},
            "packages": [], "docs": {"show": True, "node_color": None}, "contract": {"enforced": False,
                                                                                        "alias_types": True},
            "event_time": None, "concurrent_batches": None, "access": "protected", "freshness": None,
            **extra}


def _columns(names: list[str]) -> dict[str, Any]:
    return {c: {"name": c, "description": f"The {c} column.", "meta": {}, "data_type": None,
                "constraints": [], "quote": None, "config": {"meta": {}, "tags": []}, "tags": [],
                "granularity": None, "doc_blocks": []} for c in names}


def _common(uid: str, resource_type: str, name: str, fqn: list[str], path: str, code: str) -> dict[str, Any]:
    return {"database": "warehouse", "schema": "analytics", "name": name, "resource_type": resource_type,
            "package_name": PROJECT, "path": path.split("/", 1)[-1], "original_file_path": path,
            "unique_id": uid, "fqn": fqn, "alias": name, "checksum": _checksum(code), "tags": [],
            "description": "", "meta": {}, "docs": {"show": True, "node_color": None}, "patch_path": None,
            "build_path": None, "unrendered_config": {}, "created_at": 1760000000.0,
            "relation_name": f'"warehouse"."analytics"."{name}"', "raw_code": code, "doc_blocks": [],
            "language": "sql", "refs": [], "sources": [], "metrics": [], "functions": [],
            "depends_on": {"macros": [], "nodes": []}, "compiled_path": None, "contract":
            {"enforced": False, "alias_types": True, "checksum": None}, "group": None}


def _test(uid: str, name: str, parents: list[str], column: str, model_name: str,
          kwargs: dict[str, Any]) -> dict[str, Any]:
    code = "{{ test_" + name.split("_", 1)[0] + "(**_dbt_generic_test_kwargs) }}"
    node = _common(uid, "test", name, [PROJECT, name], f"models/{model_name}.yml", code)
    node.update(config=_config("test", severity="ERROR", store_failures=None, where=None, limit=None,
                               fail_calc="count(*)", warn_if="!= 0", error_if="!= 0"),
                column_name=column, file_key_name=f"models.{model_name}", attached_node=parents[0],
                test_metadata={"name": name.split("_", 1)[0], "kwargs": kwargs, "namespace": None})
    node["depends_on"] = {"macros": ["macro.dbt.test_not_null"], "nodes": parents}
    node["refs"] = [{"name": p.rsplit(".", 1)[-1], "package": None, "version": None}
                    for p in parents if p.startswith("model.")]
    return node


def model_name(i: int) -> str:
    return f"m_{i:05d}"


def generate(dest: Path, models: int, seed: int = 11) -> tuple[Path, Path]:
    """Write ``dest/project`` and ``dest/manifest.json`` for ``models`` models; return both paths."""
    rng = random.Random(seed)
    project = dest / "project"
    (project / "seeds").mkdir(parents=True, exist_ok=True)
    (project / "dbt_project.yml").write_text(
        f"name: {PROJECT}\nversion: '1.0'\nconfig-version: 2\nprofile: {PROJECT}\n"
        f"models:\n  {PROJECT}:\n    +materialized: view\n")
    nodes: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for s in range(SOURCES):
        uid = f"source.{PROJECT}.raw.table_{s}"
        sources[uid] = {"database": "warehouse", "schema": "raw", "name": f"table_{s}", "resource_type":
                        "source", "package_name": PROJECT, "path": "models/sources.yml",
                        "original_file_path": "models/sources.yml", "unique_id": uid,
                        "fqn": [PROJECT, "raw", f"table_{s}"], "source_name": "raw",
                        "source_description": "", "loader": "", "identifier": f"table_{s}",
                        "loaded_at_field": "_loaded_at", "description": "", "columns": _columns(["id"]),
                        "freshness": {"warn_after": {"count": 12, "period": "hour"},
                                      "error_after": {"count": None, "period": None}, "filter": None},
                        "meta": {}, "tags": [], "config": {"enabled": True}, "relation_name":
                        f'"warehouse"."raw"."table_{s}"', "created_at": 1760000000.0}
    for s in range(SEEDS):
        name = f"seed_{s}"
        csv = "id,label\n" + "".join(f"{i},label {i}\n" for i in range(20))
        (project / "seeds" / f"{name}.csv").write_text(csv)
        uid = f"seed.{PROJECT}.{name}"
        nodes[uid] = _common(uid, "seed", name, [PROJECT, name], f"seeds/{name}.csv", "")
        nodes[uid].update(config=_config("seed", delimiter=","), columns={}, root_path=str(project))
    per_layer = max(1, models // LAYERS)
    for i in range(models):
        name, layer = model_name(i), min(i // per_layer, LAYERS - 1)
        first = layer * per_layer
        if layer == 0:
            ups = [f"source.{PROJECT}.raw.table_{rng.randrange(SOURCES)}"]
            if rng.random() < 0.3:
                ups.append(f"seed.{PROJECT}.seed_{rng.randrange(SEEDS)}")
            code = "select id, label from {{ source('raw', '" + ups[0].rsplit(".", 1)[-1] + "') }}\n"
        else:
            picked = sorted(rng.sample(range(first), rng.randint(1, 3)))
            ups = [f"model.{PROJECT}.{model_name(p)}" for p in picked]
            code = "\nunion all\n".join(
                "select id, label from {{ ref('" + model_name(p) + "') }}" for p in picked) + "\n"
        path = f"models/layer_{layer:02d}/{name}.sql"
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(code)
        uid = f"model.{PROJECT}.{name}"
        node = _common(uid, "model", name, [PROJECT, f"layer_{layer:02d}", name], path, code)
        node.update(config=_config("view"), columns=_columns(["id", "label"]), access="protected",
                    constraints=[], version=None, latest_version=None, deprecation_date=None,
                    primary_key=["id"], time_spine=None, description=f"Benchmark model {name}.",
                    patch_path=f"{PROJECT}://models/layer_{layer:02d}/schema.yml")
        node["depends_on"] = {"macros": [], "nodes": ups}
        node["refs"] = [{"name": u.rsplit(".", 1)[-1], "package": None, "version": None}
                        for u in ups if u.startswith("model.")]
        node["sources"] = [["raw", u.rsplit(".", 1)[-1]] for u in ups if u.startswith("source.")]
        nodes[uid] = node
        for test in ("not_null", "unique"):
            tname = f"{test}_{name}_id"
            nodes[f"test.{PROJECT}.{tname}.{i:010x}"] = _test(
                f"test.{PROJECT}.{tname}.{i:010x}", tname, [uid], "id", name, {"column_name": "id"})
        parent = ups[0]
        if i % 3 == 0 and parent.startswith("model."):
            to = parent.rsplit(".", 1)[-1]
            tname = f"relationships_{name}_id__id__ref_{to}_"
            nodes[f"test.{PROJECT}.{tname}.{i:010x}"] = _test(
                f"test.{PROJECT}.{tname}.{i:010x}", tname, [parent, uid], "id", name,
                {"column_name": "id", "to": f"ref('{to}')", "field": "id"})
    for layer in range(min(LAYERS, models)):
        names = [model_name(i) for i in range(models) if min(i // per_layer, LAYERS - 1) == layer]
        entries = "".join(f"  - name: {n}\n    description: Benchmark model {n}.\n    columns:\n"
                          "      - name: id\n        data_tests: [not_null, unique]\n" for n in names)
        schema = project / "models" / f"layer_{layer:02d}" / "schema.yml"
        schema.write_text(f"version: 2\nmodels:\n{entries}")
    manifest = {"metadata": {"dbt_schema_version": "https://schemas.getdbt.com/dbt/manifest/v12.json",
                             "dbt_version": "1.11.0", "generated_at": "2026-01-01T00:00:00Z",
                             "invocation_id": "00000000-0000-0000-0000-000000000000", "env": {},
                             "project_name": PROJECT, "project_id": "0" * 32, "user_id": None,
                             "send_anonymous_usage_stats": False, "adapter_type": ADAPTER},
                "nodes": nodes, "sources": sources, "macros": {}, "docs": {}, "exposures": {}, "metrics": {},
                "groups": {}, "selectors": {}, "disabled": {}, "parent_map": {}, "child_map": {},
                "group_map": {}, "saved_queries": {}, "semantic_models": {}, "unit_tests": {},
                "functions": {}}
    manifest_path = dest / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    return project, manifest_path
