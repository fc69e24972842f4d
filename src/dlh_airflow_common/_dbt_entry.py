"""Child-process entry for dbt: prints only the events the parent consumes, as JSON lines.

`dbt --log-format json` serialises every event, debug ones included, before filtering by level; on
large projects that costs seconds per build. Here dbt's console stays quiet (text) and a dbtRunner
callback writes info/warn/error events only. When dbt raises, a last line names the exception's
classes (:func:`exception_event`), so the parent classifies by dbt's own types instead of its words.
This module must stay import-light: it is started once per dbt command.
"""

from __future__ import annotations

import json
import sys
from typing import Any

_LEVELS = {"info", "warn", "error"}
# Debug-level events the parent reads anyway: each node's start and final result, for per-node
# streaming and for the nodes a killed deferred run reports as running.
_NAMES = {"NodeStart", "NodeFinished"}
# Name of the event that carries dbt's exception; not one of dbt's own event names.
EXCEPTION_EVENT = "DlhDbtException"


def exception_event(exc: BaseException) -> dict[str, Any]:
    """dbt's exception as an ``{info, data}`` event: its class names (most specific first) and text.

    Debug level: dbt itself reports the text (``MainEncounteredError``), so it is shown only once.
    """
    classes = [cls.__name__ for cls in type(exc).__mro__ if cls not in (BaseException, object)]
    return {"info": {"name": EXCEPTION_EVENT, "level": "debug", "msg": ""},
            "data": {"classes": classes, "message": str(exc)}}


def _emit(msg: Any) -> None:
    if msg.info.level not in _LEVELS and msg.info.name not in _NAMES:
        return
    from google.protobuf.json_format import MessageToDict

    sys.stdout.write(json.dumps(MessageToDict(msg, preserving_proto_field_name=True)) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    from dbt.cli.main import dbtRunner

    result = dbtRunner(callbacks=[_emit]).invoke(argv)
    if result.exception is not None:
        sys.stdout.write(json.dumps(exception_event(result.exception)) + "\n")
        return 2
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
