"""The users' runbook (docs/runbook_refresh_yango_cabinet_claims_mv.md): its SQL, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook_refresh_yango_cabinet_claims_mv.md"


def runbook_sql_blocks() -> list[str]:
    """Every ```sql block of the runbook, exactly as written (the health query appears twice: once)."""
    blocks = re.findall(r"```sql\n(.*?)```", RUNBOOK.read_text(encoding="utf-8"), flags=re.DOTALL)
    unique: list[str] = []
    for block in blocks:
        if block not in unique:
            unique.append(block)
    return unique
