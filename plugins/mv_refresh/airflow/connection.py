"""Between Airflow connections and libpq conninfo strings, both ways."""

from __future__ import annotations

import json
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

# Extras that PostgresHook itself interprets and that are not libpq parameters.
_HOOK_ONLY_EXTRAS = {"cursor", "iam", "redshift", "redshift-serverless", "aws_conn_id", "cluster-identifier",
                     "workgroup-name", "azure_conn_id", "client_encoding_from_extra"}


def dsn_for_connection(conn_id: str) -> str:
    """The conninfo of Airflow connection ``conn_id``, resolved through ``PostgresHook`` at run time.

    Built the way ``PostgresHook.get_conn`` builds its arguments (host, login, password, schema as the
    database, port, libpq extras), including IAM tokens when the connection asks for them.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=conn_id)
    conn = hook.connection
    login, password, port = conn.login, conn.password, conn.port
    if conn.extra_dejson.get("iam", False):
        login, password, port = hook.get_iam_token(conn)
    return _conninfo(hook, conn, login, password, port)


async def adsn_for_connection(conn_id: str) -> str:
    """:func:`dsn_for_connection` for an event loop (a trigger): the connection is fetched without blocking
    the loop (``BaseHook.aget_connection``); an IAM token, if asked for, is fetched in a worker thread."""
    import asyncio

    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.sdk import BaseHook

    conn = await BaseHook.aget_connection(conn_id)
    hook = PostgresHook(postgres_conn_id=conn_id, connection=conn)
    login, password, port = conn.login, conn.password, conn.port
    if conn.extra_dejson.get("iam", False):
        login, password, port = await asyncio.to_thread(hook.get_iam_token, conn)
    return _conninfo(hook, conn, login, password, port)


def _conninfo(hook: Any, conn: Any, login: str | None, password: str | None, port: int | None) -> str:
    params: dict[str, Any] = {
        "host": conn.host or None,
        "port": port or None,
        "user": login or None,
        "password": password or None,
        "dbname": hook.database or conn.schema or None,
    }
    ignored = set(getattr(hook, "ignored_extra_options", ())) | _HOOK_ONLY_EXTRAS
    for key, value in conn.extra_dejson.items():
        if key not in ignored:
            params[key] = value
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


def airflow_connection_json(dsn: str) -> str:
    """The DSN as an Airflow connection in JSON form (for ``AIRFLOW_CONN_<ID>``).

    JSON rather than a URI so a Unix-socket directory as host (the embedded server) survives intact.
    """
    params = conninfo_to_dict(dsn)
    conn: dict[str, Any] = {"conn_type": "postgres"}
    for ours, theirs in (("host", "host"), ("port", "port"), ("user", "login"), ("password", "password"),
                         ("dbname", "schema")):
        if params.get(ours):
            conn[theirs] = int(params[ours]) if ours == "port" else params[ours]
    extra = {k: v for k, v in params.items() if k not in ("host", "port", "user", "password", "dbname")}
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)
