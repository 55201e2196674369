"""Who hears about a failed refresh: an Airflow notifier chosen by configuration.

``MV_REFRESH_ALERT`` picks the channel: ``log`` (default: an ERROR line in the task's log, which any log
shipping can alert on), ``smtp`` (the SMTP provider's notifier; ``MV_REFRESH_ALERT_TO`` = addresses,
comma-separated) or ``slack`` (the Slack provider's notifier; ``MV_REFRESH_ALERT_TO`` = channel).
``MV_REFRESH_ALERT_CONN_ID`` names the connection (default ``smtp_default`` / ``slack_api_default``).
The choice is read when the DAG is parsed (environment only); the connection is looked up when a
failure happens, so parsing never touches a database or a secrets backend.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseNotifier

CHANNELS = ("log", "smtp", "slack")
_DEFAULT_CONN = {"smtp": "smtp_default", "slack": "slack_api_default"}


class RefreshFailureNotifier(BaseNotifier):
    """Log every failure; also send it over SMTP or Slack when configured to."""

    def __init__(self, *, channel: str = "log", to: str | None = None, conn_id: str | None = None) -> None:
        super().__init__()
        if channel not in CHANNELS:
            raise ValueError(
                f"MV_REFRESH_ALERT={channel!r} is not a channel: use one of {', '.join(CHANNELS)}"
            )
        if channel != "log" and not to:
            raise ValueError(f"MV_REFRESH_ALERT={channel} needs MV_REFRESH_ALERT_TO (addresses or a Slack channel)")
        self.channel = channel
        self.to = to
        self.conn_id = conn_id or _DEFAULT_CONN.get(channel)

    @staticmethod
    def describe(context: dict[str, Any]) -> tuple[str, str]:
        ti = context.get("ti") or context.get("task_instance")
        dag_id = getattr(ti, "dag_id", "?")
        task_id = getattr(ti, "task_id", "?")
        run_id = getattr(ti, "run_id", "?")
        exception = context.get("exception")
        subject = f"[mv-refresh] {dag_id}.{task_id} failed"
        body = f"{subject} in run {run_id}: {exception or 'no exception recorded'}"
        url = getattr(ti, "log_url", None)
        if url:
            body += f"\nlog: {url}"
        return subject, body

    def notify(self, context: dict[str, Any]) -> None:
        subject, body = self.describe(context)
        self.log.error("%s", body)
        if self.channel == "smtp":
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            SmtpNotifier(to=[a.strip() for a in self.to.split(",") if a.strip()], subject=subject,
                         html_content=f"<pre>{_escape(body)}</pre>", smtp_conn_id=self.conn_id).notify(context)
        elif self.channel == "slack":
            try:
                from airflow.providers.slack.notifications.slack import SlackNotifier
            except ImportError as exc:
                raise RuntimeError(
                    "MV_REFRESH_ALERT=slack needs apache-airflow-providers-slack: add it to requirements.txt"
                ) from exc
            SlackNotifier(slack_conn_id=self.conn_id, text=body, channel=self.to).notify(context)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def failure_notifier_from_env(environ: dict[str, str] | None = None) -> RefreshFailureNotifier:
    env = os.environ if environ is None else environ
    return RefreshFailureNotifier(
        channel=(env.get("MV_REFRESH_ALERT") or "log").strip().lower(),
        to=env.get("MV_REFRESH_ALERT_TO") or None,
        conn_id=env.get("MV_REFRESH_ALERT_CONN_ID") or None,
    )
