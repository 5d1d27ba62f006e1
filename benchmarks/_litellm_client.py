"""The LiteLLM column of benchmark 1, run by the scratch venv's Python (LiteLLM is not one of
imagerouter's dependencies; bench_client_cpu.py installs it into a venv under /tmp).

What a LiteLLM user writes for one image: `litellm.image_generation` against an
OpenAI-compatible endpoint (the benchmark's stub, which answers like OpenAI's images API with
the same PNG the RunAPI emulator serves), then decode the base64 and write the file. Prints
one JSON object: the CPU seconds (`time.process_time()`) of each measured image.

    python _litellm_client.py BASE_URL KEY OUT_DIR COUNT WARMUP
"""

from __future__ import annotations

import base64
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path


def main() -> None:
    base, key, out, count, warmup = sys.argv[1:6]
    import litellm  # imported before timing starts, as a long-running app would have it

    litellm.telemetry = False
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    cpu: list[float] = []
    for index in range(int(warmup) + int(count)):
        before = time.process_time()
        response = litellm.image_generation(
            model="openai/gpt-image-1",
            prompt=f"a lighthouse at dusk {index}",
            api_base=base,
            api_key=key,
            size="1024x1024",
        )
        data = base64.b64decode(response.data[0].b64_json)
        (directory / f"{index}.png").write_bytes(data)
        if index >= int(warmup):
            cpu.append(time.process_time() - before)
    print(json.dumps({"cpu": cpu, "litellm": version("litellm")}))


if __name__ == "__main__":
    main()
