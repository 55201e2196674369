"""Where the project's files are, wherever it is deployed.

An Astro image lays the project out as ``/usr/local/airflow/{dags,plugins,include}``; a checkout has the
same shape. The package lives in ``plugins/mv_refresh``, so ``include/`` is two levels up from here.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INCLUDE_DIR = PROJECT_ROOT / "include"
SQL_OPS_DIR = INCLUDE_DIR / "sql" / "ops"
SQL_DEMO_DIR = INCLUDE_DIR / "sql" / "demo"
DEFAULT_CATALOG = INCLUDE_DIR / "mv_refresh.yaml"


def catalog_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The catalog to load: an explicit path, else ``MV_REFRESH_CONFIG``, else the project's own."""
    chosen = explicit or os.environ.get("MV_REFRESH_CONFIG") or DEFAULT_CATALOG
    return Path(chosen)
