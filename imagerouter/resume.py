"""Collect paid jobs whose images never reached disk (a crash, a kill, a timeout).

The ledger knows every accepted task and how to poll it (`poll_ref`). `resume` polls each one
that has images missing: a finished task's images are downloaded while its URLs live; a
running one is left for later (or waited for); a failed one is closed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .collect import ImageSink, save_image
from .errors import ImageRouterError, ProviderError

if TYPE_CHECKING:
    from .ledger import UncollectedTask
    from .router import Router

__all__ = ["ResumeOutcome", "resume_uncollected"]

log = logging.getLogger("imagerouter.resume")


@dataclass(frozen=True)
class ResumeOutcome:
    task_id: str
    provider: str
    state: str  # collected | running | failed | error
    images: tuple[str, ...] = ()
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "task_id": self.task_id,
            "provider": self.provider,
            "state": self.state,
            "images": list(self.images),
            "detail": self.detail,
        }


async def resume_uncollected(router: Router) -> list[ResumeOutcome]:
    if router.ledger is None:
        raise ImageRouterError("resume needs the ledger (ledger.enabled: true)")
    outcomes = []
    for task in await asyncio.to_thread(router.ledger.uncollected):
        try:
            outcomes.append(await _resume_one(router, task))
        except ImageRouterError as exc:
            outcomes.append(ResumeOutcome(task.task_id, task.provider, "error", detail=str(exc)))
    return outcomes


async def _resume_one(router: Router, task: UncollectedTask) -> ResumeOutcome:
    ledger = router.ledger
    assert ledger is not None
    if task.provider not in router.catalog.entries:
        return ResumeOutcome(task.task_id, task.provider, "error", detail="provider not installed")
    client = router.client_for(task.provider)
    try:
        status = await client.get(task.poll_ref or task.provider_task_id)
    except ProviderError as exc:
        return ResumeOutcome(task.task_id, task.provider, "error", detail=str(exc))
    if not status.terminal:
        return ResumeOutcome(task.task_id, task.provider, "running", detail=status.state.value)
    if not status.state.produced_images:
        await asyncio.to_thread(
            ledger.task_finished, task.task_id, state=status.state.value, error=status.error
        )
        return ResumeOutcome(task.task_id, task.provider, "failed", detail=status.error or "")
    sink = ImageSink(
        http=router.http(),
        output_dir=Path(task.output_dir),
        provider=task.provider,
        max_bytes=router.config.downloads.max_bytes,
        max_pixels=router.config.downloads.max_pixels,
        headers=client.auth_headers(),
        sleep=router.sleep,
    )
    saved = []
    for index, url in enumerate(status.image_urls):
        if index in task.saved_indexes:
            continue
        image = await save_image(
            sink,
            ledger,
            task_id=task.task_id,
            index=index,
            url=url,
            stem=f"{task.task_id}-r{index + 1}",
            convert_to=task.output_format,
            url_expires_at=status.urls_expire_at,
        )
        saved.append(str(image.path))
    await asyncio.to_thread(
        ledger.task_finished,
        task.task_id,
        state="collected",
        billed_usd=status.billed_usd,
        image_urls=status.image_urls,
        urls_expire_at=status.urls_expire_at,
    )
    log.info("resumed %s: saved %d image(s)", task.task_id, len(saved))
    return ResumeOutcome(task.task_id, task.provider, "collected", images=tuple(saved))
