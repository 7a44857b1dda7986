"""Declarative automation: the conditions that say when each layer after bronze runs by itself, and the
freshness policies that say how fresh it must be. Which asset carries which condition is its domain's
choice; the sensor that evaluates them all is `orchestration.automation_sensor`.

The automation sensor (on by default) evaluates the conditions every `OPTIBID_SENSOR_INTERVAL_SECONDS` and
emits a backfill whenever a tick requests more than one partition of an asset, so 30 days landing at once
are one backfill, which the assets' single-run backfill policy turns into one Spark run and one dbt run.

- Day partitions (silver market, gold facts and KPIs, anomalies, ClickHouse exports) follow their own
  upstream day partitions at any age (a corrected day from weeks ago is rebuilt, and only that day), fill
  in partitions whose upstream days exist but which were never built (a day without data waits for it).
  Updates of unpartitioned parents (trading state, dimensions, the bronze tables themselves) rebuild only
  the last `RECENT_DAYS` days: they carry no day, and rebuilding the whole history on every CDC batch would
  never end. A parent that changes while its child's day is being built (a correction landing mid-run) has
  that day built again once the run ends: the run under way started before the change and never read it.
- Delivery-day assets (forecasts, optimizations) build tomorrow's partition a lead time before each
  market's day-ahead gate closure (cron in the market's timezone), and again when their inputs change,
  at most once an hour; optimizations follow a new forecast at once.
- Unpartitioned assets run when a parent updates (`eager`), or once when they were never built.
- The weekly ML assets run after Monday's cron tick once gold has updated since.
- Operations (lake maintenance, backups, retention) run once after each tick of their own cron, whatever
  their parents did (`nightly`).

Asset checks own no condition: Dagster then runs them in every run (and backfill) of their asset, where
blocking checks stop the downstream assets of the same run. A condition of their own would take them out
of those runs and start one check-only run per partition.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from infra.settings import get_settings
from ml.optimization.gate_closures import GATE_CLOSURES, run_before_gate_closure

AC = dg.AutomationCondition

# Days that an update of an unpartitioned parent rebuilds: yesterday (late trades, corrections of the last
# market day) and today.
RECENT_DAYS = 2
WEEKLY_CRON = "0 3 * * 1"  # Monday 03:00 in the partition timezone: backtests and drift reports
INPUT_CHANGE_CRON = "0 * * * *"  # day-ahead assets re-run on changed inputs at most once an hour
GOLD_FACT_FAIL_WINDOW = timedelta(hours=2)
GOLD_FACT_WARN_WINDOW = timedelta(hours=1)
# Queue priorities (`dagster/priority`, higher leaves the run queue first): runs on the path from a landed file
# or a CDC batch to gold go before the analyses that follow gold (`orchestration.automation_sensor`). The tier
# tag lets the instance cap the analyses' share of the run slots (`infra.dagster_instance`): a priority only
# orders the queue, and a landed file must not find every slot taken by forecasts that started a moment before.
TIER_TAG = "optibid/tier"
WAREHOUSE_RUN_TAGS = {"dagster/priority": "10", TIER_TAG: "warehouse"}
DOWNSTREAM_RUN_TAGS = {"dagster/priority": "0", TIER_TAG: "downstream"}


def _settings_timezone() -> str:
    return get_settings().market_timezone


def _deps_present(
    optional_deps: dg.AssetSelection | None = None, building_deps: dg.AssetSelection | None = None
) -> dg.AutomationCondition:
    """Every parent (partition) exists, but `optional_deps`; a parent in `building_deps` may also be under its
    first build (see `day_partitions`)."""
    missing = (AC.missing() & ~AC.will_be_requested()).with_label("missing")
    required = AC.any_deps_match(missing)
    if optional_deps is not None:
        required = required.ignore(optional_deps)
    if building_deps is None:
        return (~required).with_label("parents_exist")
    # A run only, not a backfill: a backfill's run is created later, possibly after this asset's own, and the
    # pool orders steps in the order their runs asked.
    not_being_built = (missing & ~AC.run_in_progress()).with_label("missing_not_being_built")
    building = AC.any_deps_match(not_being_built).allow(building_deps)
    if optional_deps is not None:
        building = building.ignore(optional_deps)
    return (~(required.ignore(building_deps) | building)).with_label("parents_exist_or_being_built")


def _since_handled(condition: dg.AutomationCondition) -> dg.AutomationCondition:
    """`condition.since_last_handled()`, except that a change seen while this partition is being built is kept
    until the partition is next requested.

    `since_last_handled()` also resets when the partition is updated, so a run that was already under way when a
    parent changed (a correction landing while its day is rebuilt) would swallow the change it never read.
    Resetting on requests alone would not do either: a multi-asset built whole is often requested for its
    neighbour's sake, and would then rebuild once more. Parents updated by the same run as this asset are no
    trigger (`any_deps_updated` leaves those out).
    """
    requested = (AC.newly_requested() | AC.initial_evaluation()).with_label("requested")
    # Dagster's own same-run exclusion (`executed_with_root_target`) recognises only the last partition a
    # multi-day run wrote, and such runs come from backfills: a parent still in a backfill while this
    # partition is in one too is taken for the same backfill's work, not for a change.
    same_backfill = AC.backfill_in_progress() & AC.any_deps_in_progress()
    during_run = (condition & AC.in_progress() & ~same_backfill).since(requested)
    during_run = during_run.with_label("changed_during_run")
    return condition.since_last_handled() | during_run


def _parents_running(building_deps: dg.AssetSelection | None = None) -> dg.AutomationCondition:
    """A run is building a parent partition of this one; for a parent in `building_deps`, only a rebuild counts
    (see `day_partitions`).

    Runs only, not backfills: the backfill daemon looks at its backfills every 30 s, so a backfill whose
    run has finished stays "in progress" for up to that long, and children would wait on it for nothing.
    A backfill whose run has not started yet has not changed the parent either.
    """
    running = AC.any_deps_match(AC.run_in_progress())
    if building_deps is not None:
        rebuilt = (AC.run_in_progress() & ~AC.missing()).with_label("rebuild_in_progress")
        running = running.ignore(building_deps) | AC.any_deps_match(rebuilt).allow(building_deps)
    return running.with_label("parent_run_in_progress")


def _fill_missing(
    unpartitioned_deps: dg.AssetSelection | None = None, building_deps: dg.AssetSelection | None = None
) -> dg.AutomationCondition:
    """Never built, its day-mapped parents hold the day (a day without data waits for it) or are under their
    first build in `building_deps`, and the last attempt did not fail (no retry loops)."""
    deps_present = _deps_present(unpartitioned_deps, building_deps)
    return (AC.missing() & deps_present & ~AC.execution_failed()).with_label("fill_missing")


def _optional_parent_arrived(optional_deps: dg.AssetSelection) -> dg.AutomationCondition:
    """An optional parent (partition) was built for the first time: every day built before it read its empty
    table or stand-in. Not on a condition's first evaluation (a new deployment), where parents that exist
    already are no news."""
    built = (~AC.missing()).with_label("built")
    arrived = AC.any_deps_match(built.newly_true()).allow(optional_deps) & ~AC.initial_evaluation()
    return arrived.with_label("optional_parent_arrived")


def day_partitions(
    unpartitioned_deps: dg.AssetSelection | None = None,
    recent_deps: dg.AssetSelection | None = None,
    *,
    optional_deps: dg.AssetSelection | None = None,
    late_deps: dg.AssetSelection | None = None,
    building_deps: dg.AssetSelection | None = None,
    optional_day_deps: dg.AssetSelection | None = None,
) -> dg.AutomationCondition:
    """The condition of a daily-partitioned asset whose day-partitioned parents map day to day.

    `unpartitioned_deps` are the parents without partitions: their updates touch every day as far as
    Dagster knows, so they only rebuild the last `RECENT_DAYS` days; `recent_deps` narrows that to the
    parents whose days are not recorded otherwise (default: all of them). A day is built (changed or
    missing) only once its parents exist, but `optional_deps` (parents that may never exist, like a tick
    feed nobody sends). `late_deps` are optional parents without partitions whose tables exist empty before
    their first build (the silver trading tables of a deployment whose trading feed is not connected yet):
    the days are built without them (unless their feed is connected and their first build is on its way), and
    every day is rebuilt once when they first arrive. A change of
    theirs that failed a blocking check waits until a correction passes: their children keep the last good
    state, and the models downstream (the KPIs beside the trading facts) keep following the market.

    `building_deps` are unpartitioned parents built in a pool shared with this asset, by a run whose step in
    that pool comes first (the dimensions: the reference run's dbt step, `dbt` pool at op granularity,
    `infra.dagster_instance`): a day may be requested while their first build is under way, because the pool
    gives that step its slot before this asset's, which follows a Spark step. On a cold start the landed days
    then go in one run with silver instead of waiting for the dimensions and following in a second run. Not for
    partitioned parents: their run may start with its dbt step after this one's (measured: a dimension built
    before its staging view).

    `optional_day_deps` are day-partitioned parents that a day is built without, and fills in without (the
    trading facts of the KPIs: the model reads an empty relation in their place until they exist, dbt's
    `optional_ref`). Their first build under way does not hold the day back either (measured on a cold start:
    the KPIs otherwise waited a minute for the trading facts' run to end). Their day arriving later is an
    update like any other, and the day is built again.
    """
    same_day = AC.any_deps_updated()
    if unpartitioned_deps is not None:
        same_day = same_day.ignore(unpartitioned_deps)
    any_parent = AC.any_deps_updated() if recent_deps is None else AC.any_deps_updated().allow(recent_deps)
    recent = AC.in_latest_time_window(timedelta(days=RECENT_DAYS)) & any_parent
    trigger = same_day.with_label("day_partition_updated") | recent.with_label(
        "unpartitioned_parent_updated_recent_days"
    )
    if late_deps is not None:
        trigger = trigger | _optional_parent_arrived(late_deps)
    optional_deps = _union(optional_deps, late_deps, optional_day_deps)
    changed = _since_handled(trigger)
    if optional_day_deps is not None:
        # Kept until the day is next asked for, whatever the day did meanwhile: its run, started before the
        # parent's first build ended, read the empty stand-in, and may well have ended before the parent's
        # (measured: the parents' update was then taken as handled by the day's own).
        arrival = _optional_parent_arrived(optional_day_deps).since(AC.newly_requested())
        changed = changed | arrival.with_label("optional_parent_arrived_since_requested")
    condition = (
        (changed | _fill_missing(_union(unpartitioned_deps, optional_day_deps), building_deps))
        & _deps_present(optional_deps, building_deps)
        & ~_parents_running(_union(building_deps, optional_day_deps))
        & ~AC.in_progress()
    )
    if late_deps is not None:
        condition = condition & ~_late_parent_pending(late_deps) & ~_parent_checks_failed(late_deps)
    return condition.with_label("day_partitions")


def _union(*selections: dg.AssetSelection | None) -> dg.AssetSelection | None:
    given = [s for s in selections if s is not None]
    if not given:
        return None
    union = given[0]
    for selection in given[1:]:
        union = union | selection
    return union


def _late_parent_pending(deps: dg.AssetSelection) -> dg.AutomationCondition:
    """A late parent is about to be built for the first time: its own parents exist (the feed is connected) and
    its build has not failed. Building the days before it would only build them twice."""
    pending = (AC.missing() & ~AC.any_deps_missing() & ~AC.execution_failed()).with_label("first_build_pending")
    return AC.any_deps_match(pending).allow(deps).with_label("late_parent_pending")


def _parent_checks_failed(deps: dg.AssetSelection) -> dg.AutomationCondition:
    """A blocking check of one of `deps` failed on its latest execution (a check never run has not failed).

    Dagster's blocking checks stop the children of the same run only; a later run would read the rejected
    rows all the same."""
    failed = AC.any_checks_match(AC.check_failed(), blocking_only=True).with_label("blocking_check_failed")
    return AC.any_deps_match(failed).allow(deps).with_label("parent_blocking_check_failed")


def unpartitioned(require_parents: bool = False) -> dg.AutomationCondition:
    """Eager on any parent update (any day of a partitioned parent), and built once when missing.

    `eager()` without its missing-parents guard (a partitioned parent always has missing, empty days), and
    with a change seen during its own run kept, as for the day partitions (`_since_handled`). With
    `require_parents` (parents without partitions, like the bronze CDC tables), nothing is built before every
    parent exists: an empty Spark build would only hold up the runs that have data.
    """
    parent_updated = _since_handled(AC.newly_missing() | AC.any_deps_updated()).with_label("parent_updated")
    eager = (AC.in_latest_time_window() & parent_updated & ~_parents_running()).with_label("eager")
    condition = (eager | (AC.missing() & ~AC.execution_failed())) & ~AC.in_progress()
    if require_parents:
        condition = condition & ~AC.any_deps_missing()
    return condition.with_label("unpartitioned")


def gate_closure_crons() -> list[tuple[str, str]]:
    """(cron, timezone) of the runs before each market's day-ahead gate closure."""
    return run_before_gate_closure(timedelta(minutes=get_settings().gate_closure_lead_minutes))


def _before_gate_closure() -> dg.AutomationCondition:
    ticks = [AC.cron_tick_passed(cron, tz) for cron, tz in gate_closure_crons()]
    condition = ticks[0]
    for tick in ticks[1:]:
        condition = condition | tick
    return condition.with_label("before_gate_closure")


def day_ahead(follow: dg.AssetSelection | None = None) -> dg.AutomationCondition:
    """Tomorrow's partition of a delivery-day asset: once its inputs exist, before each gate closure, and
    when inputs change.

    Changed inputs re-run it at most hourly (a forecast takes minutes and gold's current day changes with
    every batch of ticks); parents in `follow` (the forecasts, for the optimizations) are followed at once.
    """
    inputs_changed = _since_handled(AC.any_deps_updated()) & AC.cron_tick_passed(
        INPUT_CHANGE_CRON, _settings_timezone()
    ).since_last_handled()
    # A platform that has just caught up has no forecast for tomorrow yet: build it once its inputs exist,
    # not at the next cron tick (the same guard against retry loops as the day partitions).
    first_build = (AC.missing() & ~AC.any_deps_missing() & ~AC.execution_failed()).with_label("tomorrow_missing")
    trigger = (
        _before_gate_closure().since_last_handled()
        | inputs_changed.with_label("inputs_changed_hourly")
        | first_build
    )
    if follow is not None:
        trigger = trigger | _since_handled(AC.any_deps_updated().allow(follow)).with_label("forecast_updated")
    return (
        AC.in_latest_time_window() & trigger & ~_parents_running() & ~AC.in_progress()
    ).with_label("day_ahead")


def weekly() -> dg.AutomationCondition:
    """Monday 03:00 (partition timezone), once gold has updated since the tick."""
    return AC.on_cron(WEEKLY_CRON, _settings_timezone()) & ~AC.in_progress()


def nightly(cron: str) -> dg.AutomationCondition:
    """Once after each tick of `cron` (partition timezone), not while a run of it is under way.

    Not `on_cron`, which also waits for every parent to update after the tick: maintenance and backups are
    due even on a night when some bronze table received nothing. Not on first start either: a platform
    catching up has better things to do with its two cores than compact what it has just written.
    """
    tick = AC.cron_tick_passed(cron, _settings_timezone()).since_last_handled()
    return (tick & ~AC.in_progress()).with_label(f"nightly {cron}")


# --- freshness ---------------------------------------------------------------------------------------


def gold_fact_freshness() -> dg.FreshnessPolicy:
    """Gold facts and KPIs: updated within two hours (warn after one), as the market hours advance."""
    return dg.FreshnessPolicy.time_window(fail_window=GOLD_FACT_FAIL_WINDOW, warn_window=GOLD_FACT_WARN_WINDOW)


def first_gate_closure() -> tuple[str, str]:
    """(cron, timezone) of the day's earliest day-ahead gate closure in absolute time."""
    reference = datetime(2024, 1, 10)
    first = min(
        GATE_CLOSURES.values(),
        key=lambda g: datetime.combine(reference, g.closes_at, ZoneInfo(g.timezone)).astimezone(ZoneInfo("UTC")),
    )
    return f"{first.closes_at.minute} {first.closes_at.hour} * * *", first.timezone


def day_ahead_freshness() -> dg.FreshnessPolicy:
    """Tomorrow's forecasts and schedules exist by the day's first gate closure: materialized between the
    pre-closure run (lead time before it, plus an hour of slack) and the closure itself."""
    cron, tz = first_gate_closure()
    lead = timedelta(minutes=get_settings().gate_closure_lead_minutes)
    return dg.FreshnessPolicy.cron(deadline_cron=cron, lower_bound_delta=lead + timedelta(hours=1), timezone=tz)
