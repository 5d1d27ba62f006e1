"""The gateway with the openai backend among its emulated backends: the official client's
stream gets the partial images the backend streamed, then the completed image."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import openai
from PIL import Image

from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.emulation import EmulatorServer
from imagerouter.gateway import create_app
from imagerouter.plugins import Plugins

from .conftest import base_config, deep_merge

KEY = "gateway-test-key-0123456789"


def _serve(emulators: Emulators, plugins: Plugins, tmp_path: Path) -> Iterator[str]:
    # Only openai serves: each partial image adds 100 output tokens, so Runflow's low would
    # be cheaper, and this test is about what a streaming backend's partials become.
    only_openai = {"runapi": {"enabled": False}, "runflow": {"enabled": False}}
    data = deep_merge(
        base_config(tmp_path), {"gateway": {"api_keys": [KEY]}, "providers": only_openai}
    )
    cfg = emulators.configure(load_config(data, known_providers=plugins.providers()))
    app = create_app(cfg, plugins=plugins)
    server = EmulatorServer(app).start()
    try:
        yield server.url
    finally:
        server.stop()
        app.state.gateway.close()


def test_partials_from_the_openai_backend_reach_the_official_client(
    plugins: Plugins, tmp_path: Path
) -> None:
    with Emulators.start(plugins, latency="fixed:0.02", seed=7) as emulators:
        for url in _serve(emulators, plugins, tmp_path):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
            stream = client.images.generate(
                model="gpt-image-2",
                prompt="a fox",
                stream=True,
                partial_images=2,
                quality="low",
                size="1536x1024",
            )
            events = list(stream)
            client.close()
            assert emulators.apps["openai"].counters.created == 1
    kinds = [event.type for event in events]
    assert kinds[-1] == "image_generation.completed"
    partials = [event for event in events if event.type == "image_generation.partial_image"]
    assert 1 <= len(partials) <= 2  # the seeded emulator streams some; OpenAI allows 0..N
    for event in partials:
        Image.open(io.BytesIO(base64.b64decode(event.b64_json))).verify()
    done = events[-1]
    with Image.open(io.BytesIO(base64.b64decode(done.b64_json))) as image:
        assert image.size == (1536, 1024)
