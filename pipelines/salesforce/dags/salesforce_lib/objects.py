"""The Salesforce objects we land, and the fields kept for each (raw, as text)."""

from __future__ import annotations

OBJECTS: dict[str, tuple[str, ...]] = {
    "Account": ("Id", "Name", "Type", "Industry", "AnnualRevenue", "NumberOfEmployees", "BillingCountry",
                "OwnerId", "CreatedDate", "SystemModstamp", "IsDeleted"),
    "Contact": ("Id", "AccountId", "FirstName", "LastName", "Email", "Title", "LeadSource", "CreatedDate",
                "SystemModstamp", "IsDeleted"),
    "Opportunity": ("Id", "AccountId", "Name", "StageName", "Amount", "Probability", "CloseDate", "Type",
                    "LeadSource", "ForecastCategory", "IsClosed", "IsWon", "OwnerId", "CreatedDate",
                    "SystemModstamp", "IsDeleted"),
}
RAW_SCHEMA = "raw_salesforce"


def table_for(obj: str) -> str:
    return obj.lower()


def columns_for(obj: str) -> list[str]:
    return [f.lower() for f in OBJECTS[obj]]
