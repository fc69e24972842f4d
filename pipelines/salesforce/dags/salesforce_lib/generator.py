"""An offline Salesforce org for the demo and offline runs: realistic records, dirty on purpose.

The org lives in a JSON file so successive DAG runs see one evolving org: records get edited late
(old opportunities change stage and amount with a new SystemModstamp), new contacts arrive, and some
values are dirty as in real orgs (bad numbers and dates, unknown picklist values, orphan references).
It serves the same records, in the same shape, as the REST API source.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

STAGES = [
    ("Prospecting", 10),
    ("Qualification", 20),
    ("Needs Analysis", 20),
    ("Value Proposition", 50),
    ("Id. Decision Makers", 60),
    ("Perception Analysis", 70),
    ("Proposal/Price Quote", 75),
    ("Negotiation/Review", 90),
    ("Closed Won", 100),
    ("Closed Lost", 0),
]
INDUSTRIES = ["Banking", "Retail", "Energy", "Technology", "Healthcare", "Manufacturing"]
COUNTRIES = ["US", "DE", "FR", "GB", "NL", "JP"]
FIRST = ["Ada", "Grace", "Alan", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Radia", "Edsger"]
LAST = ["Lovelace", "Hopper", "Turing", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie"]
OWNERS = ["0055g00000A1", "0055g00000B2", "0055g00000C3", "0055g00000D4"]


def sf_stamp(moment: datetime) -> str:
    """Salesforce's datetime format, e.g. 2026-03-04T10:15:30.000+0000."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def _id(prefix: str, n: int) -> str:
    return f"{prefix}5g00000{n:08d}AAA"[:18]


class FakeOrg:
    """A persistent fake org; every change stamps the records it touches."""

    def __init__(self, path: str | os.PathLike[str], seed: int = 7) -> None:
        self.path = Path(path)
        self.rng = random.Random(seed)
        self.data: dict[str, dict[str, dict[str, Any]]] = {"Account": {}, "Contact": {}, "Opportunity": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            self.rng.seed(seed + sum(len(v) for v in self.data.values()))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".org.")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.data, fh)
        os.replace(tmp, self.path)

    # -- building the org ------------------------------------------------------------------------
    def populate(
        self, accounts: int = 40, contacts: int = 120, opportunities: int = 100, now: datetime | None = None
    ) -> None:
        """Create the initial org (records spread over the last 90 days)."""
        now = now or datetime.now(UTC)
        for i in range(accounts):
            self._account(i, now - timedelta(days=self.rng.randint(30, 90)))
        for i in range(contacts):
            self._contact(i, now - timedelta(days=self.rng.randint(1, 60)))
        for i in range(opportunities):
            self._opportunity(i, now - timedelta(days=self.rng.randint(1, 60)))

    def _account(self, i: int, when: datetime) -> None:
        revenue: Any = self.rng.randint(1, 500) * 10000
        if i % 17 == 5:
            revenue = "1.2M"  # dirty number
        self.data["Account"][_id("001", i)] = {
            "Id": _id("001", i),
            "Name": f"Account {i:03d} Ltd",
            "Type": self.rng.choice(["Customer", "Prospect"]),
            "Industry": self.rng.choice(INDUSTRIES),
            "AnnualRevenue": revenue,
            "NumberOfEmployees": self.rng.randint(5, 5000),
            "BillingCountry": self.rng.choice(COUNTRIES),
            "OwnerId": self.rng.choice(OWNERS),
            "CreatedDate": sf_stamp(when),
            "SystemModstamp": sf_stamp(when),
            "IsDeleted": False,
        }

    def _contact(self, i: int, when: datetime) -> None:
        accounts = sorted(self.data["Account"])
        account = _id("001", 99999) if i % 23 == 7 else self.rng.choice(accounts)  # orphan reference
        first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
        self.data["Contact"][_id("003", i)] = {
            "Id": _id("003", i),
            "AccountId": account,
            "FirstName": first,
            "LastName": last,
            "Email": f"{first}.{last}{i}@example.com".lower(),
            "Title": self.rng.choice(["CTO", "VP Sales", None]),
            "LeadSource": self.rng.choice(["Web", "Partner", "Trade Show"]),
            "CreatedDate": sf_stamp(when),
            "SystemModstamp": sf_stamp(when),
            "IsDeleted": False,
        }

    def _opportunity(self, i: int, when: datetime) -> None:
        stage, probability = self.rng.choice(STAGES)
        amount: Any = f"{self.rng.randint(1, 200) * 500}.00"
        close = (when + timedelta(days=self.rng.randint(10, 120))).date().isoformat()
        if i % 19 == 3:
            amount = "12O0"  # letter O instead of zero
        if i % 29 == 11:
            close = "2026-02-30"
        if i % 31 == 13:
            stage = "Legacy Stage"  # a picklist value outside the standard set
        self.data["Opportunity"][_id("006", i)] = {
            "Id": _id("006", i),
            "AccountId": self.rng.choice(sorted(self.data["Account"])),
            "Name": f"Deal {i:03d}",
            "StageName": stage,
            "Amount": amount,
            "Probability": probability,
            "CloseDate": close,
            "Type": self.rng.choice(["New Business", "Existing Business"]),
            "LeadSource": self.rng.choice(["Web", "Partner"]),
            "ForecastCategory": "Pipeline",
            "IsClosed": stage.startswith("Closed"),
            "IsWon": stage == "Closed Won",
            "OwnerId": self.rng.choice(OWNERS),
            "CreatedDate": sf_stamp(when),
            "SystemModstamp": sf_stamp(when),
            "IsDeleted": False,
        }

    # -- changes over time -------------------------------------------------------------------------
    def late_edits(self, count: int = 5, now: datetime | None = None) -> list[str]:
        """Edit the oldest opportunities (a late correction): new stage and amount, new stamp."""
        now = now or datetime.now(UTC)
        oldest = sorted(self.data["Opportunity"].values(), key=lambda r: r["CreatedDate"])[:count]
        for rec in oldest:
            stage, probability = self.rng.choice(STAGES[:8])
            rec.update(
                StageName=stage,
                Probability=probability,
                IsClosed=False,
                IsWon=False,
                Amount=f"{self.rng.randint(1, 200) * 750}.00",
                SystemModstamp=sf_stamp(now),
            )
        return [r["Id"] for r in oldest]

    def new_contacts(self, count: int = 5, now: datetime | None = None) -> list[str]:
        now = now or datetime.now(UTC)
        start = len(self.data["Contact"])
        for i in range(start, start + count):
            self._contact(i, now)
        return [_id("003", i) for i in range(start, start + count)]

    # -- the source interface ----------------------------------------------------------------------
    def fetch(self, obj: str, fields: tuple[str, ...], since: str | None) -> Iterator[dict[str, Any]]:
        rows = sorted(self.data[obj].values(), key=lambda r: (r["SystemModstamp"], r["Id"]))
        for rec in rows:
            if since is None or rec["SystemModstamp"] >= since:
                yield {"attributes": {"type": obj}, **{f: rec.get(f) for f in fields}}
