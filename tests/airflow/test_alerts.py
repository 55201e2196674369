"""on_failure_callback: a notifier chosen by configuration; SMTP delivered to a real local SMTP server."""

from __future__ import annotations

import json
import socketserver
import threading
from types import SimpleNamespace

import pytest

from mv_refresh.airflow.alerts import RefreshFailureNotifier, failure_notifier_from_env

pytestmark = pytest.mark.airflow


def _context():
    ti = SimpleNamespace(dag_id="ops_mv_refresh", task_id="refresh_mv_x", run_id="scheduled__1", log_url=None)
    return {"ti": ti, "exception": RuntimeError("ops.mv_x: ERROR [23505] duplicate key value")}


def test_default_channel_logs_the_failure(capsys):
    notifier = failure_notifier_from_env({})
    assert notifier.channel == "log"
    notifier.notify(_context())
    # Airflow 3 logs through structlog to the task's output.
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "ops_mv_refresh.refresh_mv_x failed in run scheduled__1" in text
    assert "error" in text.lower() and "23505" in text


@pytest.mark.parametrize(("env", "message"), [
    ({"MV_REFRESH_ALERT": "pager"}, "is not a channel"),
    ({"MV_REFRESH_ALERT": "smtp"}, "needs MV_REFRESH_ALERT_TO"),
])
def test_bad_configuration_is_refused_with_the_fix(env, message):
    with pytest.raises(ValueError, match=message):
        failure_notifier_from_env(env)


class _SmtpSink(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to accept one message: the test reads what arrived."""

    def handle(self):
        self.wfile.write(b"220 sink ESMTP\r\n")
        in_data = False
        data: list[str] = []
        while line := self.rfile.readline():
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if in_data:
                if text == ".":
                    in_data = False
                    self.server.messages.append("\n".join(data))
                    self.wfile.write(b"250 queued\r\n")
                else:
                    data.append(text)
                continue
            verb = text.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.wfile.write(b"250 sink\r\n")
            elif verb == "DATA":
                in_data = True
                self.wfile.write(b"354 go on\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def test_smtp_channel_sends_a_real_mail(monkeypatch):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpSink)
    server.messages = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": port,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@example.com"},
        }))
        notifier = RefreshFailureNotifier(channel="smtp", to="oncall@example.com")
        notifier.notify(_context())
    finally:
        server.shutdown()
        server.server_close()
    assert len(server.messages) == 1
    assert "oncall@example.com" in server.messages[0]
    assert "ops_mv_refresh.refresh_mv_x failed" in server.messages[0]
