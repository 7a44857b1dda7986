"""Drift monitoring with Evidently (0.7 API): features, target and forecast error, per zone.

What belongs here: comparing a reference period with a current period of the standard long frame (and,
optionally, of forecast rows with actuals) and returning drift summaries plus an HTML report per zone.

Method: Evidently's `DataDriftPreset` per zone over the columns `y` (target), every exogenous feature and
`abs_error` (|y - y_hat| of the chosen model, when forecasts are given). Evidently picks the test per column
(K-S p-value for small samples, normed Wasserstein distance above 1000 rows); a column drifts when its
p-value is below / its distance is at or above the method's threshold. `drift_share` = drifted columns /
columns; `dataset_drift` = drift_share >= 0.5 (Evidently's default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ml.forecasting.data import ID_COL, TARGET_COL, TIME_COL, exogenous_columns

ERROR_COL = "abs_error"


def _import_evidently() -> tuple[type, type, type, type]:
    """Evidently's Report, Dataset, DataDefinition and DataDriftPreset.

    evidently 0.7.23 imports `pandas.core.dtypes.common.infer_dtype_from_object`, removed in pandas 3; it is
    only used by a legacy type test we do not run, so an equivalent is provided before the import.
    """
    import pandas.core.dtypes.common as pandas_common

    if not hasattr(pandas_common, "infer_dtype_from_object"):
        pandas_common.infer_dtype_from_object = lambda dtype: pd.api.types.pandas_dtype(dtype).type
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    return Report, Dataset, DataDefinition, DataDriftPreset


@dataclass(frozen=True)
class ZoneDrift:
    """Drift summary of one zone (one row of `drift_by_zone`)."""

    unique_id: str
    drift_share: float
    n_drifted: int
    n_columns: int
    dataset_drift: bool
    target_drift: bool
    error_drift: bool | None
    drifted_columns: str
    report_path: str


def _with_errors(frame: pd.DataFrame, forecasts: pd.DataFrame | None, model: str | None) -> pd.DataFrame:
    if forecasts is None:
        return frame
    rows = forecasts if model is None else forecasts[forecasts["model"] == model]
    rows = rows.dropna(subset=["y_hat"])
    actual = frame[[ID_COL, TIME_COL, TARGET_COL]]
    errors = rows[[ID_COL, TIME_COL, "y_hat"]].merge(actual, on=[ID_COL, TIME_COL], how="inner")
    errors[ERROR_COL] = (errors[TARGET_COL] - errors["y_hat"]).abs()
    return frame.merge(errors[[ID_COL, TIME_COL, ERROR_COL]], on=[ID_COL, TIME_COL], how="left")


def drift_by_zone(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    report_dir: Path,
    reference_forecasts: pd.DataFrame | None = None,
    current_forecasts: pd.DataFrame | None = None,
    model: str | None = None,
) -> pd.DataFrame:
    """One `ZoneDrift` row per zone present in both periods; writes `<report_dir>/drift_<zone>.html`.

    `reference` / `current`: standard long frames (unique_id, ds, y, exogenous...). With both forecast frames
    (standard forecast columns; `model` selects one model), forecast-error drift is included.
    """
    Report, Dataset, DataDefinition, DataDriftPreset = _import_evidently()
    report_dir.mkdir(parents=True, exist_ok=True)
    with_errors = reference_forecasts is not None and current_forecasts is not None
    ref_all = _with_errors(reference, reference_forecasts if with_errors else None, model)
    cur_all = _with_errors(current, current_forecasts if with_errors else None, model)
    columns = [TARGET_COL, *exogenous_columns(reference)] + ([ERROR_COL] if with_errors else [])
    columns = [c for c in dict.fromkeys(columns) if c in cur_all.columns]
    rows = []
    for uid in sorted(set(ref_all[ID_COL]) & set(cur_all[ID_COL])):
        ref = ref_all.loc[ref_all[ID_COL] == uid, columns].dropna(how="all")
        cur = cur_all.loc[cur_all[ID_COL] == uid, columns].dropna(how="all")
        # Constant columns have no distribution to compare (and break Evidently's histograms).
        usable = [
            c
            for c in columns
            if ref[c].notna().sum() >= 10
            and cur[c].notna().sum() >= 10
            and ref[c].nunique() > 1
            and cur[c].nunique() > 1
        ]
        if not usable:
            continue
        definition = DataDefinition(numerical_columns=usable)
        snapshot = Report([DataDriftPreset(columns=usable)]).run(
            Dataset.from_pandas(cur[usable], data_definition=definition),
            Dataset.from_pandas(ref[usable], data_definition=definition),
        )
        path = report_dir / f"drift_{uid}.html"
        snapshot.save_html(str(path))
        drifted = _drifted_columns(snapshot.dict())
        share = len(drifted) / len(usable)
        rows.append(
            ZoneDrift(
                unique_id=str(uid),
                drift_share=share,
                n_drifted=len(drifted),
                n_columns=len(usable),
                dataset_drift=share >= 0.5,
                target_drift=TARGET_COL in drifted,
                error_drift=(ERROR_COL in drifted) if ERROR_COL in usable else None,
                drifted_columns=",".join(sorted(drifted)),
                report_path=str(path),
            )
        )
    return pd.DataFrame([asdict(r) for r in rows], columns=list(ZoneDrift.__dataclass_fields__))


def _drifted_columns(snapshot: dict) -> set[str]:
    """Columns whose ValueDrift result crosses its threshold (p-value below, or distance at/above)."""
    drifted = set()
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        value, threshold, method = metric.get("value"), config.get("threshold"), str(config.get("method", ""))
        if value is None or threshold is None:
            continue
        is_p_value = "p_value" in method
        if (is_p_value and value < threshold) or (not is_p_value and value >= threshold):
            drifted.add(str(config.get("column")))
    return drifted
