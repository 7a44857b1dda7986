"""Dagster pieces every domain shares: resources, partitions and the partition-window convention, the
automation conditions and freshness policies, and the factory that turns expectation suites into checks.

Modules here import only the libraries and `infra`, never a domain module (`assets.bronze`, `assets.silver`,
...) and never `orchestration`: the domains stand on this package, and `orchestration.definitions` on them.
"""
