"""The ops schema as versioned migrations: ``include/sql/ops/V<NNN>__<name>.sql``.

``apply_migrations`` applies the missing ones in version order, all in one transaction, under a
transaction-scoped advisory lock, and records each in ``ops.schema_migrations`` with its checksum:
running it twice does nothing the second time, and two runs at once serialise on the lock (the second
finds everything applied). A file whose SQL changed after it was applied is refused: migrations are
immutable, a change goes into a new file. Comment lines (``--`` at the start of a line) and blank lines
are not part of the checksum, so a migration's explanation can be corrected. Databases migrated by
earlier versions recorded checksums of the whole text: those of the texts that shipped are known, and
are brought to the new form by the next ``init-db``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from .catalog import format_qualified_name
from .db import connect
from .paths import SQL_OPS_DIR

# pg_advisory_xact_lock key for "the ops schema is being migrated": a fixed 64-bit constant
# (b"mvr:mig\x01"), so every process of every version agrees on it.
MIGRATION_LOCK_KEY = int.from_bytes(b"mvr:mig\x01", "big", signed=True)

_FILE_PATTERN = re.compile(r"^V(?P<version>\d{3,})__(?P<name>[a-z0-9_]+)\.sql$")

_BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE IF NOT EXISTS ops.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_by text        NOT NULL DEFAULT current_user
);
"""


# Checksums of the whole file, as versions before 0.2 recorded them for the migrations they shipped, and the
# comment-free checksum of the same text: a database that recorded one of these has exactly that SQL.
_WHOLE_FILE_CHECKSUMS = {
    1: {"d0bd662ec87ef4bd7d9f03d8525639a49ef6698ce3f5be3998cdb2f383f6de98":
        "d16b2fa1a17e3f49e129e0891ec56eba6562b19a0f6a55c150c4f15130d2d2dd"},
    2: {"da7e4d16ebbd588ac5b4920069eda71f8c8eba3a91d8310afbc636a37de58020":
        "060340ff9f30c1cbd257d0839a23c8711ddea518fc6cf9530574256432d683b7"},
    3: {"c49bd4b82e9c8b3362bc961aef56c50c386f9900adb9db1fa1a695e1a98d6995":
        "1b68eab20b05a63680a65c6de2e419887391332e0a290897ecc89e8c5c13a3f2"},
}


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree; the message says how to fix it."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str = field(repr=False)

    @property
    def checksum(self) -> str:
        """sha256 of the SQL alone: blank lines and whole-line comments are left out."""
        statements = [line.rstrip() for line in self.sql.splitlines()
                      if line.strip() and not line.lstrip().startswith("--")]
        return hashlib.sha256("\n".join(statements).encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"V{self.version:03d}__{self.name}"


def discover_migrations(directory: Path = SQL_OPS_DIR) -> list[Migration]:
    """The migration files of ``directory`` in version order (other ``.sql`` files there are scripts)."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("V*.sql")):
        match = _FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(
                f"{path}: not a migration file name; name it V<NNN>__<lowercase_name>.sql (e.g. V003__add_x.sql)"
            )
        version = int(match["version"])
        if version in found:
            raise MigrationError(
                f"{path} and {found[version].path} share version {version}: give one of them the next free number"
            )
        found[version] = Migration(version, match["name"], path, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def apply_migrations(dsn: str, *, directory: Path = SQL_OPS_DIR,
                     progress: Callable[[str], None] | None = None) -> list[Migration]:
    """Bring the ops schema up to date; return the migrations applied by this call (empty if none)."""
    say = progress or (lambda _line: None)
    migrations = discover_migrations(directory)
    with connect(dsn, purpose="init-db") as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(_BOOKKEEPING)
            applied = {version: (name, checksum) for version, name, checksum
                       in conn.execute("SELECT version, name, checksum FROM ops.schema_migrations")}
            done: list[Migration] = []
            for migration in migrations:
                if migration.version in applied:
                    name, recorded = applied[migration.version]
                    _check_unchanged(migration, name, recorded)
                    if recorded != migration.checksum:  # a whole-file checksum of an earlier version
                        conn.execute("UPDATE ops.schema_migrations SET checksum = %s WHERE version = %s",
                                     (migration.checksum, migration.version))
                    say(f"  {migration.label}: already applied")
                    continue
                try:
                    conn.execute(migration.sql)
                except psycopg.Error as exc:
                    raise MigrationError(f"{migration.path} failed: {exc}") from exc
                conn.execute("INSERT INTO ops.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                             (migration.version, migration.name, migration.checksum))
                say(f"  {migration.label}: applied")
                done.append(migration)
    return done


def _check_unchanged(migration: Migration, applied_name: str, applied_checksum: str) -> None:
    known = _WHOLE_FILE_CHECKSUMS.get(migration.version, {})
    if migration.checksum not in (applied_checksum, known.get(applied_checksum)):
        raise MigrationError(
            f"{migration.path} changed after it was applied as version {migration.version} "
            f"({applied_name}): applied migrations are immutable. Restore the file and put the change "
            f"in a new migration with the next version number."
        )


def applied_versions(conn: psycopg.Connection) -> list[int]:
    """Versions recorded in ``ops.schema_migrations`` (empty when the schema was never initialised)."""
    if not conn.execute("SELECT to_regclass('ops.schema_migrations') IS NOT NULL").fetchone()[0]:
        return []
    return [row[0] for row in conn.execute("SELECT version FROM ops.schema_migrations ORDER BY version")]


# One row of ops.mv_catalog. A row that already says the same is left alone (no write, no lock).
_MIRROR_ROW = """
INSERT INTO ops.mv_catalog AS c
    (schema_name, mv_name, position, is_critical, refresh_mode, grain, upstream,
     warn_after_hours, crit_after_hours)
VALUES (%(schema)s, %(name)s, %(position)s, %(critical)s, %(mode)s, %(grain)s, %(upstream)s,
        %(warn)s, %(crit)s)
ON CONFLICT (schema_name, mv_name) DO UPDATE SET
    position = EXCLUDED.position, is_critical = EXCLUDED.is_critical,
    refresh_mode = EXCLUDED.refresh_mode, grain = EXCLUDED.grain, upstream = EXCLUDED.upstream,
    warn_after_hours = EXCLUDED.warn_after_hours, crit_after_hours = EXCLUDED.crit_after_hours,
    synced_at = clock_timestamp()
WHERE (c.position, c.is_critical, c.refresh_mode, c.grain, c.upstream, c.warn_after_hours, c.crit_after_hours)
      IS DISTINCT FROM (EXCLUDED.position, EXCLUDED.is_critical, EXCLUDED.refresh_mode, EXCLUDED.grain,
                        EXCLUDED.upstream, EXCLUDED.warn_after_hours, EXCLUDED.crit_after_hours)
"""


def _mirror_params(view) -> dict:
    return {"schema": view.schema, "name": view.name, "position": view.position, "critical": view.critical,
            "mode": view.mode, "grain": list(view.grain) or None,
            "upstream": [format_qualified_name(*key) for key in view.upstream],
            "warn": view.warn_after_hours, "crit": view.crit_after_hours}


def mirror_view(conn: psycopg.Connection, view) -> None:
    """Bring one view's row of ``ops.mv_catalog`` in step with the catalog file (every refresh does)."""
    conn.execute(_MIRROR_ROW, _mirror_params(view))


def sync_catalog(conn: psycopg.Connection, catalog) -> None:
    """Mirror the YAML catalog into ``ops.mv_catalog`` (views no longer listed are removed)."""
    with conn.transaction():
        conn.execute("DELETE FROM ops.mv_catalog WHERE (schema_name, mv_name) NOT IN "
                     "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                     ([v.schema for v in catalog.views], [v.name for v in catalog.views]))
        with conn.cursor() as cur:
            cur.executemany(_MIRROR_ROW, [_mirror_params(v) for v in catalog.views])


def init_db(dsn: str, catalog=None, *, progress: Callable[[str], None] | None = None) -> list[Migration]:
    """``mv-refresh init-db``: apply the migrations, then mirror the catalog (when given) into the database."""
    done = apply_migrations(dsn, progress=progress)
    if catalog is not None:
        with connect(dsn, purpose="init-db") as conn:
            with conn.transaction():
                # Same lock as the migrations: two init-db runs with different catalogs apply one after
                # the other instead of interleaving their rows.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
                sync_catalog(conn, catalog)
        if progress:
            progress(f"  catalog: {len(catalog.views)} views from {catalog.source}")
    return done
