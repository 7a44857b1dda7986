"""Bronze: raw data landed append-only in Delta with lineage columns, one domain module per source.

`cdc.py` drains Kafka (Debezium trading tables, market ticks); `files.py` drains the landing folder. Each
module keeps its assets, checks, job, sensors and schedule; the two never import each other.
"""
