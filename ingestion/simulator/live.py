"""Simulated load for a running platform: a history backfill, then a steady live stream.

Belongs here: producing the simulator's data to where the platform reads it (Kafka topics, the landing
folder), once (`produce_simulated_trading`, `write_market_window`) or continuously (`LiveSimulator`: price
ticks and trading changes at a steady rate, and the current day's market files re-dropped at an interval,
each holding the hours seen so far). What the data looks like is decided by `market` and `trading`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from ingestion.cdc.topics import CDC_TOPIC_PREFIX, TICKS_TOPIC
from ingestion.simulator.files import SIMULATED_FILE_DATASETS, write_landing_files
from ingestion.simulator.market import MarketDay, iter_market_days
from ingestion.simulator.trading import (
    TICK_ZONES,
    KafkaEvent,
    live_market_ticks,
    live_trading_events,
    market_tick_events,
    produce_events,
    trading_events,
)

log = logging.getLogger(__name__)


def produce_simulated_trading(
    bootstrap: str,
    events: int,
    ticks: int,
    seed: int,
    with_schema: bool,
    security: dict[str, object],
    *,
    start: datetime | None = None,
    on_event: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Produce `events` trading change events and `ticks` price ticks from `start` (default: a week ago,
    midnight UTC); the count per topic. `on_event` is called once per event sent (progress bars)."""
    if start is None:
        start = datetime.combine(date.today() - timedelta(days=7), datetime.min.time(), tzinfo=UTC)
    stream: Iterator[KafkaEvent] = itertools.chain(
        trading_events(events, seed=seed, start=start, with_schema=with_schema),
        market_tick_events(ticks, seed=seed, start=start),
    )
    if on_event is not None:
        stream = _counted(stream, on_event)
    return produce_events(bootstrap, stream, security=security)


def _counted(stream: Iterator[KafkaEvent], on_event: Callable[[], None]) -> Iterator[KafkaEvent]:
    for event in stream:
        on_event()
        yield event


def write_market_window(
    history_start: date,
    last: date,
    landing_dir: Path,
    *,
    skip_before: date | None = None,
    nodes_per_zone: int = 4,
    seed: int = 42,
) -> int:
    """Market files of `history_start`..`last` into the landing folder, leaving out days before `skip_before`
    (already written by an earlier call: the simulation is replayed from its anchor so the days join up);
    the number of files written."""
    days = (last - history_start).days + 1
    return sum(
        len(write_landing_files(day, landing_dir))
        for day in iter_market_days(history_start, days, nodes_per_zone=nodes_per_zone, seed=seed)
        if skip_before is None or day.day >= skip_before
    )


def write_market_day_so_far(
    history_start: date, landing_dir: Path, *, now: datetime, nodes_per_zone: int = 4, seed: int = 42
) -> list[Path]:
    """The market files of `now`'s UTC day holding the hours that have begun by `now`; the paths written.

    The day is simulated as the continuation of the window that starts at `history_start` with the same
    seed, so its prices join up with the history already landed.
    """
    today = now.date()
    days = (today - history_start).days + 1
    *_, day = iter_market_days(history_start, days, nodes_per_zone=nodes_per_zone, seed=seed)
    cutoff = pd.Timestamp(now).tz_convert("UTC")
    so_far = MarketDay(
        day.day,
        **{name: _until(getattr(day, name), cutoff) for name in SIMULATED_FILE_DATASETS},
    )
    return write_landing_files(so_far, landing_dir)


def _until(frame: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    if frame.empty:
        return frame
    return frame[pd.to_datetime(frame["ts_utc"], utc=True) <= cutoff].reset_index(drop=True)


@dataclass(frozen=True)
class LiveLoad:
    """The steady load of a running demo."""

    ticks_per_second_per_zone: float = 2.0
    trading_events_per_second: float = 1.0
    file_interval_seconds: float = 180.0
    nodes_per_zone: int = 4
    seed: int = 42
    ticks_topic: str = TICKS_TOPIC
    trading_topic_prefix: str = CDC_TOPIC_PREFIX


@dataclass
class LiveCounts:
    """What a `LiveSimulator` has sent so far (read by the demo's status line)."""

    ticks: int = 0
    trading_events: int = 0
    files: int = 0
    errors: list[str] = field(default_factory=list)


class LiveSimulator:
    """Produce ticks and trading changes to Kafka at a steady rate and drop the current day's market files
    every `file_interval_seconds`, on two daemon threads, until `stop()` (or the end of a `with` block).

    A failing producer or file writer is logged and retried after a pause: a broker restart must not end
    the load of a long-running demo.
    """

    def __init__(
        self,
        bootstrap: str,
        security: dict[str, object],
        landing_dir: Path,
        history_start: date,
        load: LiveLoad = LiveLoad(),
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.landing_dir = landing_dir
        self.history_start = history_start
        self.load = load
        self.counts = LiveCounts()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LiveSimulator:
        """Start both the Kafka stream and the file drops."""
        return self.start_stream().start_files()

    def start_stream(self) -> LiveSimulator:
        """Start producing ticks and trading changes."""
        return self._spawn(self._produce, "live-kafka")

    def start_files(self) -> LiveSimulator:
        """Start dropping the current day's files (the first drop is immediate)."""
        return self._spawn(self._drop_files, "live-files")

    def _spawn(self, loop: Callable[[], None], name: str) -> LiveSimulator:
        if any(t.name == name for t in self._threads):
            return self
        thread = threading.Thread(target=self._retrying, args=(loop,), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> LiveSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _retrying(self, loop: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                loop()
            except Exception as exc:  # keep the load alive across broker or disk hiccups; report them
                self.counts.errors.append(f"{type(exc).__name__}: {exc}")
                log.warning("live simulator: %s failed, retrying in 5 s", loop.__name__, exc_info=True)
                self._stop.wait(5)

    def _produce(self) -> None:
        produce_events(self.bootstrap, self._paced_events(), security=self.security)

    def _paced_events(self) -> Iterator[KafkaEvent]:
        """Ticks and trading changes interleaved at their rates; returns (ending the producer) on stop."""
        ticks = live_market_ticks(seed=self.load.seed, topic=self.load.ticks_topic)
        trading = live_trading_events(seed=self.load.seed, topic_prefix=self.load.trading_topic_prefix)
        tick_rate = self.load.ticks_per_second_per_zone * len(TICK_ZONES)
        trade_rate = self.load.trading_events_per_second
        started = time.monotonic()
        sent_ticks = sent_trades = 0
        while not self._stop.is_set():
            elapsed = time.monotonic() - started
            while sent_ticks < elapsed * tick_rate:
                yield next(ticks)
                sent_ticks += 1
                self.counts.ticks += 1
            while sent_trades < elapsed * trade_rate:
                yield next(trading)
                sent_trades += 1
                self.counts.trading_events += 1
            self._stop.wait(0.1)

    def _drop_files(self) -> None:
        while not self._stop.is_set():
            written = write_market_day_so_far(
                self.history_start,
                self.landing_dir,
                now=datetime.now(UTC),
                nodes_per_zone=self.load.nodes_per_zone,
                seed=self.load.seed,
            )
            self.counts.files += len(written)
            self._stop.wait(self.load.file_interval_seconds)
