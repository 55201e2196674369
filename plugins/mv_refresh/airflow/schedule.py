"""The schedule of ``ops_mv_refresh``: hourly, or when a tracked source commits a change (docs/events.md).

``refresh_schedule()`` reads only the environment (DAG parsing stays free of database access):

* ``MV_REFRESH_EVENTS``: ``on`` (default) or ``off``. On: ``AssetOrTimeSchedule`` of the hourly cron and
  the sources' asset, watched by :class:`~mv_refresh.airflow.triggers.SourceChangeTrigger` in the
  triggerer. Off: the hourly cron only.
* ``MV_REFRESH_EVENTS_QUIET_SECONDS`` (default 30), ``MV_REFRESH_EVENTS_MAX_WAIT_SECONDS`` (default 300),
  ``MV_REFRESH_EVENTS_POLL_SECONDS`` (default 5): the trigger's debounce and poll.

The trigger's kwargs come from these values and the catalog's connection id only, so every parse builds
the same trigger (Airflow matches asset watchers by their kwargs' hash: a kwarg that changed between
parses would replace the watcher, and a new watcher starts by checking for changes nobody saw).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable

HOURLY = "0 * * * *"
WATCHER_NAME = "mv_refresh_source_changes"
_ON = {"on", "true", "1", "yes"}
_OFF = {"off", "false", "0", "no"}


class ScheduleConfigError(ValueError):
    """A setting of the event-driven schedule is not understood; the message names it and the fix."""


@dataclass(frozen=True)
class EventSettings:
    enabled: bool
    quiet_period: float
    max_wait: float
    poll_interval: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EventSettings:
        env = os.environ if env is None else env
        flag = (env.get("MV_REFRESH_EVENTS") or "on").strip().lower()
        if flag not in _ON | _OFF:
            raise ScheduleConfigError(f"MV_REFRESH_EVENTS={env.get('MV_REFRESH_EVENTS')!r}: use on (runs on source "
                                      "changes and hourly) or off (hourly only)")
        quiet = _seconds(env, "MV_REFRESH_EVENTS_QUIET_SECONDS", 30.0, minimum=0.0)
        max_wait = _seconds(env, "MV_REFRESH_EVENTS_MAX_WAIT_SECONDS", 300.0, minimum=1.0)
        poll = _seconds(env, "MV_REFRESH_EVENTS_POLL_SECONDS", 5.0, minimum=0.1)
        return cls(enabled=flag in _ON, quiet_period=quiet, max_wait=max_wait, poll_interval=poll)


def _seconds(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ScheduleConfigError(f"{name}={raw!r}: a number of seconds, e.g. {default:g}") from None
    if value < minimum:
        raise ScheduleConfigError(f"{name}={raw!r}: at least {minimum:g} seconds")
    return value


def sources_asset(conn_id: str, settings: EventSettings) -> Asset:
    """The tracked sources of the warehouse behind ``conn_id``, watched for committed changes."""
    from .triggers import SourceChangeTrigger

    trigger = SourceChangeTrigger(conn_id=conn_id, poll_interval=settings.poll_interval,
                                  quiet_period=settings.quiet_period, max_wait=settings.max_wait)
    return Asset(name=f"mv-refresh sources ({conn_id})", uri=f"mv-refresh-sources://{quote(conn_id, safe='')}",
                 watchers=[AssetWatcher(name=WATCHER_NAME, trigger=trigger)])


def refresh_schedule(conn_id: str, env: Mapping[str, str] | None = None) -> CronTriggerTimetable | AssetOrTimeSchedule:
    """Hourly, or (events on) hourly or on the sources' asset."""
    settings = EventSettings.from_env(env)
    hourly = CronTriggerTimetable(HOURLY, timezone="UTC")
    if not settings.enabled:
        return hourly
    return AssetOrTimeSchedule(timetable=hourly, assets=sources_asset(conn_id, settings))
