"""BI layer library: the gold-table registry, ClickHouse replication and analytics, Postgres BI access,
and the semantic (HTML) description of the gold layer. No Dagster or FastAPI imports."""
