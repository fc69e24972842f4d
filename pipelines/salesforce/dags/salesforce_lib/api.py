"""Read Salesforce objects incrementally through the REST API (simple-salesforce).

Pages are followed through ``nextRecordsUrl``; an expired session (HTTP 401 INVALID_SESSION_ID) logs in
again and repeats the call once. Records are selected with ``SystemModstamp >= watermark``: inclusive,
so records sharing the boundary timestamp are never skipped (the landing upsert makes re-reads harmless).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)


def soql_datetime(stamp: str) -> str:
    """A SystemModstamp as a SOQL literal, floored to the second (so `>=` keeps the boundary)."""
    parsed = datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_soql(obj: str, fields: tuple[str, ...], since: str | None) -> str:
    where = f" WHERE SystemModstamp >= {soql_datetime(since)}" if since else ""
    return f"SELECT {', '.join(fields)} FROM {obj}{where} ORDER BY SystemModstamp, Id"


class SalesforceApiSource:
    """Fetches records of one object modified since a watermark, page by page."""

    def __init__(self, login: Callable[[], Any]) -> None:
        self._login = login
        self._sf: Any = None

    def _call(self, fn: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        from simple_salesforce.exceptions import SalesforceExpiredSession

        if self._sf is None:
            self._sf = self._login()
        try:
            return fn(self._sf)
        except SalesforceExpiredSession:
            log.warning("Salesforce session expired; logging in again")
            self._sf = self._login()
            return fn(self._sf)

    def fetch(self, obj: str, fields: tuple[str, ...], since: str | None) -> Iterator[dict[str, Any]]:
        soql = build_soql(obj, fields, since)
        # queryAll includes soft-deleted rows, so IsDeleted reaches the warehouse.
        page = self._call(lambda sf: sf.query(soql, include_deleted=True))
        while True:
            yield from page.get("records", [])
            if page.get("done", True):
                return
            next_url = page["nextRecordsUrl"]
            page = self._call(lambda sf, url=next_url: sf.query_more(url, identifier_is_url=True,
                                                                      include_deleted=True))


def login_from_connection(conn: Any) -> Callable[[], Any]:
    """A login function from an Airflow connection: login/password, extra security_token and domain."""

    def login() -> Any:
        from simple_salesforce import Salesforce

        extra = conn.extra_dejson or {}
        return Salesforce(username=conn.login, password=conn.password,
                          security_token=extra.get("security_token", ""),
                          domain=extra.get("domain", "login"), version=extra.get("version", "59.0"))

    return login
