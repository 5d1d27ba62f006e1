#!/usr/bin/env bash
# Install the core, the provider plugins and the test tools, editable.
# The core goes first and alone: the plugins depend on imagerouter-core, which is on no package
# index, and the pip that Python 3.11 ships (23.2) does not see a local project given in the same
# command as satisfying that dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -e '.[dev]'
python3 -m pip install $(for p in providers/*/; do printf -- '-e ./%s ' "${p%/}"; done)
