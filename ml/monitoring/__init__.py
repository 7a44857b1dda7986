"""Model and data monitoring: Evidently drift reports (`drift`), spike/level-shift detection (`anomalies`), and
their runs against the warehouse (`drift_windows` reads the two windows compared, `anomaly_days` replaces a
market day's rows in gold.anomalies)."""
