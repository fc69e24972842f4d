"""Run dbt Core from Apache Airflow in production."""

__version__ = "0.1.0"
