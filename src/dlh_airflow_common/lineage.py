"""OpenLineage for a dbt Core run, built from that run's own artifacts.

The per-node events come from ``openlineage.common.provider.dbt`` (the code behind ``dbt-ol``), but
fed in memory: its local processor re-reads ``dbt_project.yml`` and ``profiles.yml`` from disk, and
we never write a profile (it may carry secrets) anywhere just so lineage can read it back. The
library only needs the adapter type and the address fields of the target (host/port, DuckDB path,
...) to name dataset namespaces, so the caller passes the non-secret profile output dict instead.

The library skips seeds (no event for a seed and no seed among a model's inputs); a small subclass
adds both, so ``seed -> staging model`` lineage is not lost.

Every OpenLineage / provider import is lazy so this module imports without the ``openlineage`` extra.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset, InputDataset, OutputDataset, RunEvent
    from openlineage.client.facet_v2 import JobFacet, RunFacet
    from openlineage.common.provider.dbt.facets import ParentRunMetadata

__all__ = ["build_operator_lineage", "emit_node_events", "task_lineage"]

log = logging.getLogger(__name__)

# dbt fills these in when a profile leaves the port out; the library's namespaces need it spelled out.
_DEFAULT_PORTS = {"postgres": 5432, "redshift": 5439}


def build_operator_lineage(
    artifacts_dir: Path,
    *,
    adapter_type: str | None = None,
    profile_output: dict[str, Any],
    job_namespace: str,
    parent_run: ParentRunMetadata | None = None,
) -> tuple[OperatorLineage[Dataset, RunFacet], list[RunEvent]]:
    """Turn one dbt run's artifacts into task-level lineage plus the per-node OpenLineage events.

    ``artifacts_dir`` holds ``manifest.json`` and ``run_results.json`` (``catalog.json`` is used for
    column types when present). ``adapter_type`` defaults to ``profile_output["type"]``, then to the
    manifest's adapter. ``profile_output`` is read only for address fields, never rendered or stored.
    ``parent_run`` (e.g. the Airflow task run) becomes the ``parent`` facet of every node event.

    The ``OperatorLineage`` lists what the run wrote (outputs of successful nodes) and what it read
    that it did not itself produce. The events are START plus COMPLETE/FAIL per executed model,
    snapshot and seed, and per tested model/singular test, as ``dbt-ol`` would emit them.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.common.provider.dbt.utils import PRODUCER

    manifest = _load_json(artifacts_dir / "manifest.json")
    run_results = _load_json(artifacts_dir / "run_results.json")
    catalog_path = artifacts_dir / "catalog.json"
    catalog = _load_json(catalog_path) if catalog_path.is_file() else None

    adapter = adapter_type or profile_output.get("type") or manifest.get("metadata", {}).get("adapter_type")
    if not adapter:
        raise ValueError("adapter type unknown: pass adapter_type or a profile output with 'type'")
    profile: dict[str, Any] = {**profile_output, "type": adapter}
    if adapter in _DEFAULT_PORTS:
        profile.setdefault("port", _DEFAULT_PORTS[adapter])

    processor = _processor_class()(
        manifest, run_results, profile, catalog, producer=PRODUCER, job_namespace=job_namespace
    )
    if parent_run is not None:
        processor.dbt_run_metadata = parent_run
    events: list[RunEvent] = processor.parse().events()

    inputs, outputs = _aggregate(events)
    lineage: OperatorLineage[Dataset, RunFacet] = OperatorLineage(inputs=[*inputs], outputs=[*outputs])
    return lineage, events


def _load_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _aggregate(events: list[RunEvent]) -> tuple[list[InputDataset], list[OutputDataset]]:
    """Task-level inputs and outputs, one entry per (namespace, name).

    Outputs come from COMPLETE events only: a failed node wrote nothing. A dataset any node of this
    run was going to write is not an input of the task, even if that node failed.
    """
    from openlineage.client.event_v2 import InputDataset, OutputDataset, RunState

    produced = {(o.namespace, o.name) for e in events for o in e.outputs or []}
    outputs: dict[tuple[str, str], OutputDataset] = {}
    inputs: dict[tuple[str, str], InputDataset] = {}
    for event in events:
        if event.eventType == RunState.COMPLETE:
            for o in event.outputs or []:
                outputs.setdefault((o.namespace, o.name), OutputDataset(
                    namespace=o.namespace, name=o.name, facets=o.facets,
                    outputFacets=getattr(o, "outputFacets", None)))
        for i in event.inputs or []:
            key = (i.namespace, i.name)
            if key not in produced:
                inputs.setdefault(key, InputDataset(
                    namespace=i.namespace, name=i.name, facets=i.facets,
                    inputFacets=getattr(i, "inputFacets", None)))
    return list(inputs.values()), list(outputs.values())


@cache
def _processor_class() -> type[Any]:
    """The library's artifact processor fed from memory, with seed support; built on first use."""
    from openlineage.client.event_v2 import Job
    from openlineage.client.facet_v2 import job_type_job
    from openlineage.client.uuid import generate_new_uuid
    from openlineage.common.provider.dbt.facets import DbtNodeJobFacet, DbtRunRunFacet
    from openlineage.common.provider.dbt.processor import (
        DbtArtifactProcessor,
        DbtEvents,
        DbtRunContext,
        ModelNode,
    )

    class InMemoryDbtArtifactProcessor(DbtArtifactProcessor):  # type: ignore[misc]
        """Artifacts and profile output given as dicts, so nothing is re-read from disk."""

        # `dbt compile`, `run-operation`, ... have no lineage: return no events rather than raise.
        should_raise_on_unsupported_command = False

        def __init__(self, manifest: dict[str, Any], run_results: dict[str, Any],
                     profile: dict[str, Any], catalog: dict[str, Any] | None, **kwargs: Any) -> None:
            # skip_errors: a node with a status the library does not map yields no event, not a crash
            super().__init__(skip_errors=True, **kwargs)
            self._artifacts = (manifest, run_results, profile, catalog)

        def get_dbt_metadata(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any],
                                            dict[str, Any] | None]:
            return self._artifacts

        def dbt_run_run_facet(self) -> dict[str, Any]:
            invocation_id = self.run_metadata.get("invocation_id")
            if not invocation_id:
                return {}
            return {"dbt_run": DbtRunRunFacet(
                invocation_id=invocation_id,
                project_name=self.manifest.get("metadata", {}).get("project_name"),
                dbt_runtime="core",
                full_refresh=self.full_refresh,
            )}

        def parse_execution(self, context: Any, nodes: dict[str, Any]) -> Any:
            models = super().parse_execution(context, nodes)
            self._add_seed_inputs(context, models)
            events = self._parse_seeds(context)  # seeds first: they run before what reads them
            events += models
            return events

        def _seed_node(self, context: Any, unique_id: str) -> Any:
            return ModelNode(
                type="seed",
                metadata_node=context.manifest["nodes"][unique_id],
                catalog_node=(context.catalog or {}).get("nodes", {}).get(unique_id),
            )

        def _add_seed_inputs(self, context: DbtRunContext, events: Any) -> None:
            """Seeds a model reads, which the library drops from its inputs."""
            parent_map: dict[str, list[str]] = context.manifest.get("parent_map", {})
            seed_inputs: dict[str, list[Any]] = {}
            for event in [*events.starts, *events.completes, *events.fails]:
                dbt_node = (event.job.facets or {}).get("dbt_node")
                unique_id = getattr(dbt_node, "unique_id", None)
                if not unique_id or not unique_id.startswith(("model.", "snapshot.")):
                    continue
                if unique_id not in seed_inputs:
                    seed_inputs[unique_id] = [
                        self.node_to_dataset(self._seed_node(context, parent), has_facets=True)
                        for parent in parent_map.get(unique_id, []) if parent.startswith("seed.")
                    ]
                if seed_inputs[unique_id]:
                    # a new list: START and COMPLETE/FAIL of one node share the library's list
                    event.inputs = [*(event.inputs or []), *seed_inputs[unique_id]]

        def _parse_seeds(self, context: DbtRunContext) -> Any:
            """START and COMPLETE/FAIL per executed seed, shaped like the library's model events."""
            events = DbtEvents()
            for result in context.run_results["results"]:
                unique_id: str = result["unique_id"]
                if not unique_id.startswith("seed.") or result["status"] == "skipped":
                    continue
                node = self._seed_node(context, unique_id)
                meta = node.metadata_node
                job_name = self._format_dataset_name(
                    meta["database"], meta["schema"], self.removeprefix(unique_id, "seed.")
                ) + (".build.seed" if self.command == "build" else ".seed")
                job_facets: dict[str, JobFacet] = {
                    "jobType": job_type_job.JobTypeJobFacet(
                        jobType="SEED", integration="DBT", processingType="BATCH", producer=self.producer),
                    "dbt_node": DbtNodeJobFacet(
                        original_file_path=meta.get("original_file_path"), database=meta.get("database"),
                        schema=meta.get("schema"), alias=meta.get("alias"), unique_id=unique_id),
                }
                run_facets: dict[str, RunFacet] = {}
                if tags := self._build_tags_run_facet(meta.get("tags"), meta.get("meta")):
                    run_facets["tags"] = tags
                started_at, completed_at = self.get_timings(result["timing"])
                events.add(self.to_openlineage_events(
                    result["status"], started_at, completed_at,
                    self.get_run(run_id=str(generate_new_uuid()), query_id=self.get_query_id(result),
                                 run_facets=run_facets),
                    Job(namespace=self.job_namespace, name=job_name, facets=job_facets),
                    [],
                    self.node_to_output_dataset(node, has_facets=True,
                                                adapter_response=result.get("adapter_response")),
                ))
            return events

    return InMemoryDbtArtifactProcessor


def task_lineage(ti: Any, artifacts_dir: Path, profile_output: dict[str, Any]) -> Any:
    """Lineage of one finished task try, parsed now (its artifacts are gone when OpenLineage asks).

    ``None`` when the openlineage extra is missing, OpenLineage has no transport (parsing the manifest
    would be wasted time) or the run wrote no manifest. Never raises: lineage is best-effort.
    """
    if not (artifacts_dir / "manifest.json").is_file():
        return None
    try:
        from airflow.providers.openlineage import conf as ol_conf
    except ImportError:
        return None
    if ol_conf.is_disabled():  # checked first: importing the macros costs a task ~0.5 s of CPU
        return None
    try:
        from airflow.providers.openlineage.plugins import macros
        from openlineage.common.provider.dbt.facets import ParentRunMetadata

        parent = ParentRunMetadata(run_id=macros.lineage_run_id(ti), job_name=macros.lineage_job_name(ti),
                                   job_namespace=macros.lineage_job_namespace())
        return build_operator_lineage(artifacts_dir, job_namespace=ol_conf.namespace(), parent_run=parent,
                                      profile_output=profile_output)
    except Exception as exc:
        log.warning("OpenLineage facets not built: %s", exc)
        return None


def emit_node_events(node_events: list[Any]) -> None:
    """Send the per-node events through the OpenLineage listener's adapter (best-effort)."""
    try:
        from airflow.providers.openlineage.plugins.listener import get_openlineage_listener

        adapter = get_openlineage_listener().adapter
        for event in node_events:
            adapter.emit(event)
    except Exception as exc:
        log.warning("OpenLineage per-node events not emitted: %s", exc)
