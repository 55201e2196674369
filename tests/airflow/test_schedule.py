"""The schedule of ops_mv_refresh (mv_refresh.airflow.schedule): hourly, or on a committed source change."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

from mv_refresh.airflow.schedule import WATCHER_NAME, EventSettings, ScheduleConfigError, refresh_schedule
from mv_refresh.airflow.triggers import CLASSPATH, SourceChangeTrigger

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


def _watchers(schedule: AssetOrTimeSchedule):
    return list(schedule.asset_condition.watchers)


def test_events_on_by_default_hourly_or_the_sources_asset():
    schedule = refresh_schedule("warehouse", env={})
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert isinstance(schedule.timetable, CronTriggerTimetable)
    assert schedule.timetable.expression == "0 * * * *" and str(schedule.timetable.timezone) == "UTC"
    [watcher] = _watchers(schedule)
    assert watcher.name == WATCHER_NAME
    assert watcher.trigger.serialize() == (CLASSPATH, {"conn_id": "warehouse", "channel": None, "poll_interval": 5.0,
                                                       "quiet_period": 30.0, "max_wait": 300.0})


def test_intervals_from_the_environment_and_the_same_trigger_on_every_parse():
    env = {"MV_REFRESH_EVENTS": "on", "MV_REFRESH_EVENTS_QUIET_SECONDS": "2",
           "MV_REFRESH_EVENTS_MAX_WAIT_SECONDS": "20", "MV_REFRESH_EVENTS_POLL_SECONDS": "0.5"}
    first, second = (_watchers(refresh_schedule("postgres_default", env=env))[0].trigger for _ in range(2))
    assert first.serialize()[1] == {"conn_id": "postgres_default", "channel": None, "poll_interval": 0.5,
                                    "quiet_period": 2.0, "max_wait": 20.0}
    assert SourceChangeTrigger.hash(*first.serialize()) == SourceChangeTrigger.hash(*second.serialize())


@pytest.mark.parametrize("flag", ["off", "OFF", "false", "0", "no"])
def test_events_off_is_the_hourly_cron_only(flag):
    schedule = refresh_schedule("postgres_default", env={"MV_REFRESH_EVENTS": flag})
    assert isinstance(schedule, CronTriggerTimetable) and schedule.expression == "0 * * * *"


@pytest.mark.parametrize(("name", "value"), [("MV_REFRESH_EVENTS", "sometimes"),
                                             ("MV_REFRESH_EVENTS_QUIET_SECONDS", "thirty"),
                                             ("MV_REFRESH_EVENTS_QUIET_SECONDS", "-1"),
                                             ("MV_REFRESH_EVENTS_MAX_WAIT_SECONDS", "0"),
                                             ("MV_REFRESH_EVENTS_POLL_SECONDS", "0")])
def test_a_bad_setting_is_named(name, value):
    with pytest.raises(ScheduleConfigError, match=name):
        EventSettings.from_env({name: value})


@pytest.mark.parametrize(("flag", "kind"), [("off", CronTriggerTimetable), ("on", AssetOrTimeSchedule)])
def test_the_dag_follows_the_switch_and_parses_without_a_database(monkeypatch, flag, kind):
    import psycopg
    from airflow.dag_processing.dagbag import DagBag

    def refuse(*args, **kwargs):
        raise AssertionError("a DAG file opened a database connection at parse time")

    monkeypatch.setattr(psycopg, "connect", refuse)
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(refuse))
    monkeypatch.setenv("MV_REFRESH_EVENTS", flag)
    bag = DagBag(dag_folder=str(DAGS_DIR / "ops_mv_refresh.py"))
    assert bag.import_errors == {}
    dag = bag.dags["ops_mv_refresh"]
    assert isinstance(dag.timetable, kind)
    assert dag.max_active_runs == 1
