"""The wheel: it carries the unit, the sysusers file and the example configuration, byte for byte
the repository's, declares Python >= 3.10 (tomli there) and the SPDX licence, and builds without
warnings."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile

from tests.daemon_harness import REPO
from tests.install.sandbox import copy_checkout

# This machine's pip configuration lists local mirrors that lack some packages; pip notes each.
MIRROR_NOTE = re.compile(r"WARNING: Location 'file://.*' is ignored")


def test_the_wheel_ships_the_service_files_and_builds_without_warnings(tmp_path):
    source = copy_checkout(tmp_path / "syncd")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(source)]
    build = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    noise = [line for line in (build.stdout + build.stderr).splitlines()
             if re.search(r"(?i)warn|deprecat", line) and not MIRROR_NOTE.search(line)]
    assert noise == []
    (wheel,) = (tmp_path / "dist").glob("syncd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name, origin in (("syncd.service", "systemd/syncd.service"), ("syncd.sysusers", "systemd/syncd.sysusers"),
                             ("config.example.toml", "config.example.toml")):
            assert archive.read(f"syncd/install/data/{name}") == (REPO / origin).read_bytes()
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        fields = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in fields
    assert "Requires-Python: >=3.10" in fields
    assert "Requires-Dist: tomli>=2; python_version < \"3.11\"" in fields
