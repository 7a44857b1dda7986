"""The column names of ML's two frame formats, shared by every ML module and by the warehouse reads.

The long frame: `unique_id` (zone), `ds` (hour start, UTC), `y` (value), then exogenous columns. The forecast
frame (FORECAST_COLUMNS): `unique_id`, `ds`, `model`, `y_hat` and the interval columns. See
`ml.forecasting` for what each column means. Only names live here: no logic and no imports, so any ML module
can depend on it without creating a cycle.
"""

ID_COL = "unique_id"
TIME_COL = "ds"
TARGET_COL = "y"
INTERVAL_COLUMNS = ["q10", "q50", "q90", "lo80", "hi80", "lo95", "hi95"]
FORECAST_COLUMNS = [ID_COL, TIME_COL, "model", "y_hat", *INTERVAL_COLUMNS]
