"""The API's endpoint families, one module each exposing `router`; `serving_api.app` mounts them under /api/v1.

What belongs in a router: request parsing, the tenancy gate (`deps.scoped`) and the response shape. Queries
live in `serving_api.repository` / `serving_api.tabular`, and the work itself in the libraries' public
packages (`ml.optimization`, `ingestion.files`, `ingestion.bi`, `ingestion.cdc`), never in a router.
"""
