"""Where imagerouter keeps its own files (the ledger, and anything else it must remember).

`$IMAGEROUTER_HOME` wins; otherwise the platform's user data directory
(`~/.local/share/imagerouter` on Linux). The directory is created on first use.

Emulated runs keep their own ledger next to the real one (`ledger.db` ->
`ledger.emulated.db`), so their spend, budgets and unfinished jobs never mix with real money.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = [
    "EMULATED_SUFFIX",
    "HOME_ENV",
    "default_ledger_path",
    "emulated_ledger_path",
    "home_path",
    "imagerouter_home",
]

HOME_ENV = "IMAGEROUTER_HOME"
EMULATED_SUFFIX = ".emulated"


def imagerouter_home() -> Path:
    """The imagerouter home directory, created if missing."""
    home = home_path()
    home.mkdir(parents=True, exist_ok=True)
    return home


def home_path() -> Path:
    """Where the home directory is, without creating it (for reads that may find nothing)."""
    configured = os.environ.get(HOME_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path(
        platformdirs.user_data_dir("imagerouter")
    )


def default_ledger_path() -> Path:
    """The ledger database used when no path is configured."""
    return imagerouter_home() / "ledger.db"


def emulated_ledger_path(real: Path | None = None) -> Path:
    """The ledger emulated runs use instead of `real` (default: `default_ledger_path()`).

    A sibling file, `<stem>.emulated<suffix>`, so an explicitly configured ledger gets its own
    emulated twin too; a path that already is an emulated ledger is returned unchanged.
    """
    path = real if real is not None else default_ledger_path()
    if path.stem.endswith(EMULATED_SUFFIX):
        return path
    return path.with_name(f"{path.stem}{EMULATED_SUFFIX}{path.suffix}")
