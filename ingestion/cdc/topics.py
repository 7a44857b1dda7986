"""Which Kafka topic lands in which bronze table, and how its messages are decoded.

Debezium topics are `<server>.<schema>.<table>` and land in `bronze/cdc__<table>`; the plain-JSON market
tick topic lands in `bronze/ticks__prices`. Bookkeeping tables shared by every topic live next to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    CDC_SOURCE_TABLES: tuple[str, ...]

CDC_TOPIC_PREFIX = "optibid.public"
TICKS_TOPIC = "optibid.market.ticks"

BRONZE_LAYER = "bronze"
DEAD_LETTERS_TABLE = "cdc__dead_letters"
SCHEMA_CHANGES_TABLE = "cdc__schema_changes"
TICKS_TABLE = "ticks__prices"


@dataclass(frozen=True)
class TopicRoute:
    """One topic and the bronze table it is written to."""

    topic: str
    table: str
    kind: Literal["debezium", "ticks"]

    @property
    def source_table(self) -> str:
        """The trading-system table a Debezium topic captures (last dotted segment of the topic)."""
        return self.topic.rsplit(".", 1)[-1]


def __getattr__(name: str) -> Any:
    # CDC_SOURCE_TABLES (Debezium captures every trading table) is `infra.db.TRADING_TABLES`, read on first
    # use: infra.db imports pandas and psycopg, seconds of start-up CPU for every fetch process of a drain,
    # which only needs `route_for`.
    if name == "CDC_SOURCE_TABLES":
        from infra.db import TRADING_TABLES

        return TRADING_TABLES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_topics(prefix: str = CDC_TOPIC_PREFIX, ticks_topic: str = TICKS_TOPIC) -> list[str]:
    """The topics OptiBid ingests by default: the four trading tables and the market ticks."""
    from infra.db import TRADING_TABLES

    return [f"{prefix}.{table}" for table in TRADING_TABLES] + [ticks_topic]


def route_for(topic: str, ticks_topics: tuple[str, ...] = (TICKS_TOPIC,)) -> TopicRoute:
    """The bronze route of a topic: tick topics (exact names, or `*.ticks`) or Debezium `a.b.table`."""
    if topic in ticks_topics or topic.endswith(".ticks"):
        return TopicRoute(topic, TICKS_TABLE, "ticks")
    table = topic.rsplit(".", 1)[-1]
    if not table or not table.replace("_", "").isalnum():
        raise ValueError(f"topic {topic!r} does not end in a table name; expected <server>.<schema>.<table>")
    return TopicRoute(topic, f"cdc__{table.lower()}", "debezium")
