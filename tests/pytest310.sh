#!/usr/bin/env bash
# The test suite on Python 3.10 (Ubuntu 22.04, JetPack 6), in .venv310, which tests/install.sh
# makes when it finds a 3.10 (pyenv, or python3.10 on PATH). Without one: a loud warning, exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv310/bin/python ]; then
  exec .venv310/bin/python -m pytest "$@"
fi
echo "!!! WARNING: no Python 3.10 virtualenv (.venv310): the suite ran on Python 3.11 only !!!" >&2
