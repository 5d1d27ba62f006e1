"""The public API is exactly `imagerouter.__all__`, httpx-style."""

from __future__ import annotations

import imagerouter


def test_all_lists_every_public_name_and_only_those() -> None:
    public = {name for name in vars(imagerouter) if not name.startswith("_")}
    public.discard("annotations")  # from `from __future__ import annotations`
    modules = {name for name in public if type(getattr(imagerouter, name)).__name__ == "module"}
    assert sorted(imagerouter.__all__) == sorted((public - modules) | {"__version__"})
    assert imagerouter.__all__ == sorted(imagerouter.__all__, key=str)


def test_core_never_imports_a_provider() -> None:
    from pathlib import Path

    core = Path(imagerouter.__file__).parent
    for path in core.rglob("*.py"):
        text = path.read_text()
        assert "imagerouter_runapi" not in text and "imagerouter_runflow" not in text, path
