#!/usr/bin/env bash
# Install everything the test suite needs into .venv (and the SDK oracle venvs), from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]' -r tests/requirements-sdk.txt
