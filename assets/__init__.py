"""Thin Dagster asset definitions, one module per layer; library code lives in ingestion/, ml/, expectations/."""
