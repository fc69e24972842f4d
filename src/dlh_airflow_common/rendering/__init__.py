"""Render a dbt project into Airflow tasks: one task, one per layer, or one per dbt node."""

from dlh_airflow_common.rendering.graph import DbtGraph, DbtGraphError, GraphNode, Layer, build_graph
from dlh_airflow_common.rendering.loader import GraphSource, load_graph
from dlh_airflow_common.rendering.project import DbtProject, dbt_dag, dbt_task_group

__all__ = [
    "DbtGraph",
    "DbtGraphError",
    "DbtProject",
    "GraphNode",
    "GraphSource",
    "Layer",
    "build_graph",
    "dbt_dag",
    "dbt_task_group",
    "load_graph",
]
