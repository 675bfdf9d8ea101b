#!/usr/bin/env bash
# Install everything the test suite needs into .venv (and the SDK oracle venvs), from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
# systemd-analyze checks the unit's hardening (Debian's systemd package; preinstalled on most images).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq systemd >/dev/null) || echo "warning: could not install systemd-analyze"
fi
# The status page is tested in a real browser (tests/http/test_page_browser.py): Debian's chromium,
# driven by Playwright for Python (the [test] extra) with executable_path; Playwright never downloads
# a browser of its own.
if ! [ -x /usr/bin/chromium ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium: the status page's browser test will fail"
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]' -r tests/requirements-sdk.txt

# Python 3.10 (Ubuntu 22.04, JetPack 6): tests/pytest310.sh runs the suite again in .venv310, where syncd is
# installed from its wheel (not editable), so the 3.10 install is tested too. pyenv's 3.10 first.
python310() {
  local candidate
  if command -v pyenv >/dev/null 2>&1; then
    for candidate in $(ls -d "$(pyenv root)"/versions/3.10*/bin/python3.10 2>/dev/null | sort -V -r); do
      "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo "$candidate"; return; }
    done
  fi
  if python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then command -v python3.10; fi
}
py310="$(python310)"
if [ -n "$py310" ]; then
  [ -x .venv310/bin/python ] || "$py310" -m venv .venv310
  .venv310/bin/pip install -q --upgrade pip
  rm -rf build  # setuptools' build directory keeps modules that have since moved
  .venv310/bin/pip install -q '.[test]' -r tests/requirements-sdk.txt
else
  echo "!!! WARNING: no Python 3.10 (pyenv, or python3.10 on PATH): .venv310 not made, the suite runs on Python 3.11 only !!!" >&2
fi

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
