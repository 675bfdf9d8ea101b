#!/usr/bin/env bash
# Install everything the test suite needs into .venv (and the SDK oracle venvs), from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
# systemd-analyze checks the unit's hardening (Debian's systemd package; preinstalled on most images).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq systemd >/dev/null) || echo "warning: could not install systemd-analyze"
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]' -r tests/requirements-sdk.txt

# Official SDKs used as oracles whose pinned dependencies clash with ours get their own venvs;
# their tests run them in a subprocess.
sdk_venv() {  # sdk_venv NAME REQUIREMENT...
  local dir=".venv-sdk-$1"; shift
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q "$@"
}
sdk_venv redbrick redbrick-sdk==2.35.4
sdk_venv nucleus scale-nucleus==0.22.3
