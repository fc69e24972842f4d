"""Read one run's artifacts and summarise what happened, without ever failing on a bad file."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ARTIFACTS = ("manifest.json", "run_results.json", "sources.json", "catalog.json")
# The pages `dbt docs generate` writes next to manifest/catalog; kept so the site can be published.
DOCS_PAGES = ("index.html", "static_index.html")
FAILED = {"error", "fail", "runtime error"}
WARNED = {"warn"}


def load_artifact(path: str | Path) -> dict[str, Any]:
    """The parsed artifact, or ``{}`` with a warning when it is missing or corrupt."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        log.warning("dbt artifact %s not found", path)
        return {}
    except (OSError, ValueError) as exc:
        log.warning("dbt artifact %s is unreadable or corrupt: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("dbt artifact %s is not a JSON object", path)
        return {}
    return data


def load_manifest(target_dir: str | Path) -> dict[str, Any]:
    return load_artifact(Path(target_dir) / "manifest.json")


def load_run_results(target_dir: str | Path) -> dict[str, Any]:
    return load_artifact(Path(target_dir) / "run_results.json")


def load_sources(target_dir: str | Path) -> dict[str, Any]:
    return load_artifact(Path(target_dir) / "sources.json")


def load_catalog(target_dir: str | Path) -> dict[str, Any]:
    return load_artifact(Path(target_dir) / "catalog.json")


@dataclass
class RunSummary:
    """What a run did, small enough for XCom and readable in a task log."""

    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    slowest: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "no nodes"
        out = [f"dbt summary: {self.total} nodes in {self.elapsed:.1f}s ({counts})"]
        for title, rows in (("failed", self.failures), ("warned", self.warnings)):
            for row in rows:
                msg = (row.get("message") or "").strip().splitlines()
                out.append(f"  {title}: {row['unique_id']} [{row['status']}] {msg[0] if msg else ''}")
        if self.slowest:
            out.append("  slowest: " + ", ".join(f"{r['unique_id']} {r['execution_time']:.1f}s"
                                                  for r in self.slowest))
        return out


def _node_row(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "unique_id": result.get("unique_id", "?"),
        "status": str(result.get("status", "")).lower(),
        "message": result.get("message") or "",
        "failures": result.get("failures"),
        "execution_time": float(result.get("execution_time") or 0.0),
    }


def summarize(artifact: dict[str, Any], *, slowest: int = 5) -> RunSummary:
    """Summarise run_results.json (or sources.json, which has the same ``results`` shape)."""
    rows = [_node_row(r) for r in artifact.get("results") or [] if isinstance(r, dict)]
    by_time = sorted(rows, key=lambda r: r["execution_time"], reverse=True)[:slowest]
    return RunSummary(
        counts=dict(Counter(r["status"] for r in rows)),
        failures=[r for r in rows if r["status"] in FAILED],
        warnings=[r for r in rows if r["status"] in WARNED],
        slowest=[{"unique_id": r["unique_id"], "execution_time": r["execution_time"]} for r in by_time],
        elapsed=float(artifact.get("elapsed_time") or 0.0),
    )
