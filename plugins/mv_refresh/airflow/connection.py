"""From an Airflow connection id to a libpq conninfo the engine can use."""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import make_conninfo

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
