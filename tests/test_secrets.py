"""No API key ever reaches a log line, a repr, an error or the ledger."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from imagerouter import ImageRouterError
from imagerouter.emulated import Emulators

from .conftest import MakeRouter


def test_keys_never_leak(
    make_router: MakeRouter,
    emulators: Emulators,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    router = make_router()
    keys = list(emulators.keys.values())
    seen: list[str] = []
    result = router.generate("fine")
    seen += [repr(result), str(result.to_dict()), repr(router), repr(router.config)]
    seen.append(str(router.config.public_dict()))
    emulators.apps["runapi"].options.faults.add("create:401@1")
    emulators.apps["runflow"].options.faults.add("create:500@1")
    with pytest.raises(ImageRouterError) as caught:
        router.generate("fails everywhere")
    seen += [str(caught.value), repr(caught.value)]
    cause = caught.value.__cause__ or caught.value.__context__
    if cause is not None:
        seen.append(repr(cause))
    seen.append(caplog.text)
    router.close()
    ledger_path = router.config.ledger.path  # the emulated twin of tmp_path / "ledger.db"
    assert ledger_path is not None
    ledger_bytes = ledger_path.read_bytes()
    for path in ledger_path.parent.glob(f"{ledger_path.name}*"):
        ledger_bytes += path.read_bytes()
    for key in keys:
        assert key
        for text in seen:
            assert key not in text
        assert key.encode() not in ledger_bytes
    assert "Authorization" not in caplog.text or "[redacted]" in caplog.text
