"""Where imagerouter keeps its own files (the ledger, and anything else it must remember).

`$IMAGEROUTER_HOME` wins; otherwise the platform's user data directory
(`~/.local/share/imagerouter` on Linux). The directory is created on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["HOME_ENV", "default_ledger_path", "imagerouter_home"]

HOME_ENV = "IMAGEROUTER_HOME"


def imagerouter_home() -> Path:
    """The imagerouter home directory, created if missing."""
    configured = os.environ.get(HOME_ENV, "").strip()
    home = Path(configured).expanduser() if configured else Path(
        platformdirs.user_data_dir("imagerouter")
    )
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_ledger_path() -> Path:
    """The ledger database used when no path is configured."""
    return imagerouter_home() / "ledger.db"
