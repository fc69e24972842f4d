"""Upload a run's artifacts (gzip-compressed) through Airflow's ObjectStoragePath: s3, gcs, file..."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

from airflow.sdk import ObjectStoragePath

from dlh_airflow_common.core.artifacts import ARTIFACTS

log = logging.getLogger(__name__)


def upload_artifacts(source: Path, destination: str, conn_id: str | None, *parts: str) -> list[str]:
    """Copy the artifacts in ``source`` to ``destination/<parts...>/<name>.gz``; return what was written.

    Never raises: an archive that could not be written must not fail a dbt run that succeeded.
    """
    written: list[str] = []
    try:
        base = ObjectStoragePath(destination.rstrip("/") + "/", conn_id=conn_id)
        for part in parts:
            base = base / part
        base.mkdir(parents=True, exist_ok=True)
        for name in ARTIFACTS:
            path = source / name
            if not path.is_file():
                continue
            target = base / f"{name}.gz"
            with target.open("wb") as fh:
                fh.write(gzip.compress(path.read_bytes()))
            written.append(str(target))
        log.info("Uploaded %d dbt artifacts to %s", len(written), base)
    except Exception as exc:
        log.warning("Could not upload dbt artifacts to %s: %s", destination, exc)
    return written
