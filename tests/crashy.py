"""A handler module that fails at import while the file named by CRASHY_FLAG exists."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workers.handlers import TaskContext

if Path(os.environ.get("CRASHY_FLAG", "/nonexistent-flag")).exists():
    raise RuntimeError("crashy: refusing to start while the flag file exists")


async def handler(ctx: TaskContext) -> Any:
    return {"ok": True}
