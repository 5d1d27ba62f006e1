"""Run every provider's emulator on loopback and point a config at them.

```python
with Emulators.start(plugins) as emulators:
    router = Router(emulators.configure(config), plugins=plugins)
```

Used by `--emulate` on the CLI, by the test suite and by users' own tests. Each emulator gets
its own random API key, so nothing real is ever sent and no real key is needed.

Emulated money is kept apart from real money: `configure()` points the ledger at its emulated
twin (`ledger.db` -> `ledger.emulated.db`, see imagerouter.paths), so budgets, `spend`,
`history` and `resume` over the real ledger never see an emulated job. An emulator's jobs die
with it, so `stop()` closes the jobs it left unfinished in that ledger: nothing is left for a
later `resume` to chase on a port that no longer answers.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from .emulation import (
    EmulationSpecError,
    EmulatorApp,
    EmulatorOptions,
    EmulatorServer,
    FaultPlan,
    LatencyModel,
)
from .emulation.options import DEFAULT_LATENCY
from .errors import ProviderError
from .ledger import Ledger
from .paths import default_ledger_path, emulated_ledger_path

if TYPE_CHECKING:
    from .config import Config
    from .plugins import Plugins

__all__ = [
    "EMULATED_POLL_DEADLINE_S",
    "EMULATED_POLL_INTERVAL",
    "Emulators",
    "close_orphans",
    "emulated_errors",
]

log = logging.getLogger("imagerouter.emulated")

EMULATED_POLL_INTERVAL = 0.2
# The shortest poll deadline an emulated job gets when the config sets none (it is also at
# least 4x the latency model's upper end). The real default (900 s) is sized for real
# providers; an emulated job that has not finished in this long never will, and a run whose
# every backend keeps failing should end in well under a minute.
EMULATED_POLL_DEADLINE_S = 15.0
# The advice a real run's timeout gives, longest form first, and what an emulated run says.
_RESUME_ADVICE = (
    "it may still finish and be billed: `imagerouter resume` will collect it",
    "`imagerouter resume` will collect it",
)
_EMULATED_ADVICE = "it was emulated, so it ends with this run (no charge, nothing to resume)"
_ORPHAN_NOTE = "emulated job: its emulator stopped with the run that made it (nothing to resume)"


@dataclass
class Emulators:
    """Running emulators by provider name."""

    apps: dict[str, EmulatorApp] = field(default_factory=dict)
    servers: dict[str, EmulatorServer] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    latency: LatencyModel = DEFAULT_LATENCY
    # The emulated ledgers configure() handed out; stop() closes their orphaned jobs.
    ledgers: set[Path] = field(default_factory=set)

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
        # Every spec is checked before the first emulator starts: a typo is one clear error.
        providers = plugins.providers()
        plans = _fault_plans(faults or {}, sorted(providers), seed)
        model = _latency(latency)
        running = cls(latency=model or DEFAULT_LATENCY)
        try:
            for name, provider in providers.items():
                if names is not None and name not in names:
                    continue
                key = f"emu-{secrets.token_hex(12)}"
                opts = EmulatorOptions(
                    api_key=key,
                    faults=plans.get(name) or FaultPlan.none(),
                    seed=seed,
                    latency=running.latency,
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
        for path in sorted(self.ledgers):
            close_orphans(path)
        self.ledgers.clear()

    def url(self, name: str) -> str:
        return self.servers[name].url

    def configure(self, config: Config) -> Config:
        """A copy of `config` whose providers talk to these emulators, with a ledger of its
        own (`emulated_ledger_path()` of the configured one) and no resume at start."""
        deadline = max(EMULATED_POLL_DEADLINE_S, 4 * self.latency.upper_s)
        providers = dict(config.providers)
        for name, server in self.servers.items():
            current = config.provider_settings(name)
            update: dict[str, Any] = {
                "base_url": server.url,
                "api_key": SecretStr(self.keys[name]),
                "api_key_env": None,
            }
            if current.poll_interval is None:
                # Emulated jobs take well under a second; the adaptive schedule's prior is
                # the real providers' (seconds to a minute).
                update["poll_interval"] = EMULATED_POLL_INTERVAL
            if "poll_deadline" not in current.model_fields_set:
                update["poll_deadline"] = deadline
            providers[name] = current.model_copy(update=update)
        ledger = config.ledger
        if ledger.enabled:
            path = emulated_ledger_path(ledger.path or default_ledger_path())
            # Never the shared ledger.url (e.g. PostgreSQL): emulated spend stays apart.
            ledger = ledger.model_copy(update={"path": path, "url": None})
            self.ledgers.add(path)
        # Jobs in the emulated ledger belong to emulators that are gone: never resume them.
        routing = config.routing.model_copy(update={"resume_on_start": False})
        return config.model_copy(
            update={"providers": providers, "ledger": ledger, "routing": routing,
                    "shared": _emulated_shared(config)}
        )

    def created(self) -> dict[str, int]:
        """Paid creates each emulator counted."""
        return {name: app.counters.created for name, app in self.apps.items()}


def _emulated_shared(config: Config) -> Any:
    """Emulated health stays apart from real health, as the ledger does: an emulator's
    injected fault must never eject the real provider."""
    shared = config.shared
    if shared.url == "memory":
        return shared
    if shared.url.startswith(("redis://", "rediss://")):
        return shared.model_copy(update={"prefix": f"{shared.prefix}emulated:"})
    from .stores.shared_open import shared_sqlite_path

    path = shared_sqlite_path(shared.url)
    if path is None:
        return shared
    return shared.model_copy(
        update={"url": f"sqlite://{path.with_name(f'{path.stem}.emulated{path.suffix}')}"}
    )


@contextmanager
def emulated_errors(emulated: bool = True) -> Iterator[None]:
    """Around an emulated run: an error that advises `imagerouter resume` says instead that
    the job ended with its emulator (stop() closes it), so nobody chases a dead port."""
    try:
        yield
    except ProviderError as exc:
        advice = next((text for text in _RESUME_ADVICE if text in exc.message), None)
        if emulated and advice is not None:
            exc.message = exc.message.replace(advice, _EMULATED_ADVICE)
            exc.args = (exc._render(),)
        raise


def close_orphans(path: Path) -> int:
    """Close every job an emulated ledger still counts as collectible (their emulators are
    gone, so no `resume` could reach them); returns how many. Only for emulated ledgers."""
    if not path.exists():
        return 0
    try:
        with Ledger(path) as ledger:
            orphans = ledger.uncollected()
            for task in orphans:
                ledger.task_finished(task.task_id, state="canceled", error=_ORPHAN_NOTE)
    except sqlite3.Error as exc:  # a locked or damaged emulated ledger must not break stop()
        log.warning("could not close the emulated jobs left in %s: %s", path, exc)
        return 0
    return len(orphans)


def _fault_plans(
    faults: Mapping[str, str | FaultPlan], known: list[str], seed: int | None
) -> dict[str, FaultPlan]:
    plans: dict[str, FaultPlan] = {}
    for name, spec in faults.items():
        if name not in known:
            raise EmulationSpecError(
                "faults",
                f"{name}={spec}: no provider is called {name!r}; known: {', '.join(known)}",
            )
        if isinstance(spec, FaultPlan):
            plans[name] = spec
            continue
        try:
            plans[name] = FaultPlan.parse(spec, seed=seed)
        except EmulationSpecError as exc:
            raise EmulationSpecError("faults", f"{name}: {exc.detail}") from None
    return plans


def _latency(latency: str | LatencyModel | None) -> LatencyModel | None:
    if latency is None or isinstance(latency, LatencyModel):
        return latency
    return LatencyModel.parse(latency)
