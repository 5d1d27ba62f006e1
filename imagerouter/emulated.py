"""Run every provider's emulator on loopback and point a config at them.

```python
with Emulators.start(plugins) as emulators:
    router = Router(emulators.configure(config), plugins=plugins)
```

Used by `--emulate` on the CLI, by the test suite and by users' own tests. Each emulator gets
its own random API key, so nothing real is ever sent and no real key is needed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from .emulation import EmulatorApp, EmulatorOptions, EmulatorServer, FaultPlan, LatencyModel

if TYPE_CHECKING:
    from .config import Config
    from .plugins import Plugins

__all__ = ["Emulators"]

EMULATED_POLL_INTERVAL = 0.2


@dataclass
class Emulators:
    """Running emulators by provider name."""

    apps: dict[str, EmulatorApp] = field(default_factory=dict)
    servers: dict[str, EmulatorServer] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    @classmethod
    @contextmanager
    def start(
        cls,
        plugins: Plugins,
        *,
        names: list[str] | None = None,
        latency: str | LatencyModel | None = None,
        faults: Mapping[str, str | FaultPlan] | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> Iterator[Emulators]:
        """Start an emulator for each provider that ships one (or those in `names`).
        `faults` maps provider name to a fault spec (see imagerouter.emulation.FaultPlan)."""
        running = cls()
        try:
            for name, provider in plugins.providers().items():
                if names is not None and name not in names:
                    continue
                key = f"emu-{secrets.token_hex(12)}"
                spec = (faults or {}).get(name)
                plan = spec if isinstance(spec, FaultPlan) else FaultPlan.parse(spec, seed=seed)
                opts = EmulatorOptions(
                    api_key=key,
                    faults=plan,
                    seed=seed,
                    **_latency(latency),
                    **options,
                )
                try:
                    app = provider.emulator(opts)
                except NotImplementedError:
                    continue
                server = EmulatorServer(app.app).start()
                running.apps[name] = app
                running.servers[name] = server
                running.keys[name] = key
            yield running
        finally:
            running.stop()

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()

    def url(self, name: str) -> str:
        return self.servers[name].url

    def configure(self, config: Config) -> Config:
        """A copy of `config` whose providers talk to these emulators."""
        providers = dict(config.providers)
        for name, server in self.servers.items():
            current = config.provider_settings(name)
            update: dict[str, Any] = {
                "base_url": server.url,
                "api_key": SecretStr(self.keys[name]),
                "api_key_env": None,
            }
            if "poll_interval" not in current.model_fields_set:
                # Emulated jobs take well under a second; the adaptive schedule's prior is
                # the real providers' (seconds to a minute).
                update["poll_interval"] = EMULATED_POLL_INTERVAL
            providers[name] = current.model_copy(update=update)
        return config.model_copy(update={"providers": providers})

    def created(self) -> dict[str, int]:
        """Paid creates each emulator counted."""
        return {name: app.counters.created for name, app in self.apps.items()}


def _latency(latency: str | LatencyModel | None) -> dict[str, Any]:
    if latency is None:
        return {}
    model = latency if isinstance(latency, LatencyModel) else LatencyModel.parse(latency)
    return {"latency": model}
