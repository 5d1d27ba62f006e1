#!/usr/bin/env bash
# Install the core, both provider plugins and the test tools, editable.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -e ./providers/runapi -e ./providers/runflow -e '.[dev]'
