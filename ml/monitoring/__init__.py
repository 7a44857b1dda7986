"""Model and data monitoring: Evidently drift reports (`drift`), spike/level-shift detection (`anomalies`)."""
