"""The README's systemd steps, run as they are written, as root on a throwaway copy of this machine
(tests/install/sandbox.py): then a camera user drops files, the service delivers them, and
``syncd status`` and ``syncd check`` run by hand as the service user see the service's journal.

The steps are read from the README itself (the block after the ``systemd-steps`` marker), so the
two cannot drift apart. Users, groups and files made here vanish with the sandbox.
"""

from __future__ import annotations

import re
import stat
import subprocess
import time
from pathlib import Path

from PIL import Image

from tests.daemon_harness import REPO
from tests.install.sandbox import Machine, Services, copy_checkout
from tests.install.test_unit import exposure

MARKER = "<!-- systemd-steps:"
CONFIG = "/srv/syncd/config.toml"
SYNCD = "/opt/syncd/bin/syncd"


def readme_steps(readme: Path = REPO / "README.md") -> list[str]:
    """The command lines of the fenced block after the marker (comments and blank lines dropped)."""
    text = readme.read_text()
    assert MARKER in text, f"README.md has no {MARKER} block"
    block = re.search(r"```sh\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block, "no ```sh block after the marker"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [line for line in (line.strip() for line in lines) if line and not line.startswith("#")]


def wait_for(predicate, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def uid(machine: Machine, user: str) -> int:
    for line in machine.path("/etc/passwd").read_text().splitlines():
        name, _, number, *_ = line.split(":")
        if name == user:
            return int(number)
    raise AssertionError(f"no user {user}")


def test_the_readme_steps_make_a_service_that_delivers_what_a_camera_drops(tmp_path):
    steps = readme_steps()
    checkout = copy_checkout(tmp_path / "syncd")
    with Machine() as machine, Services(machine) as services:
        outputs = []
        for step in steps:
            result = machine.run(step, cwd=checkout, timeout=900)  # pip install fetches the dependencies
            assert result.returncode == 0, f"README step failed: {step}\n{result.stdout}\n{result.stderr}"
            outputs.append(result.stdout)
            services.apply(machine.systemctl_calls())
        assert "syncd" in services.running, "the README's steps did not start the service"
        shipped = list(machine.path("/opt/syncd/lib").glob("python3*/site-packages/syncd/install/data/*"))
        assert sorted(p.name for p in shipped) == ["config.example.toml", "syncd.service", "syncd.sysusers"]
        assert "/srv/syncd/inbox: 0 items" in outputs[-1]  # status by hand, right after the start

        # The unit as installed: hardened, run from the venv with the configuration's absolute path.
        unit = services.unit("syncd")
        assert f"ExecStart={SYNCD} run --config {CONFIG}\n" in unit.read_text()
        assert exposure(unit) <= 1.0

        # A camera, in the writer group, drops a frame into a folder of its own.
        image = machine.path("/srv/frame.jpg")
        Image.new("RGB", (32, 24), "teal").save(image)
        image.chmod(0o644)
        camera = machine.run("useradd --system --no-create-home camera && usermod -aG syncd-writers camera")
        assert camera.returncode == 0, camera.stderr
        drop = ("runuser -u camera -- sh -c 'umask 002 && mkdir -p /srv/syncd/inbox/cam1 "
                "&& cp /srv/frame.jpg /srv/syncd/inbox/cam1/frame_{}.jpg'")
        result = machine.run(drop.format("0001"))
        assert result.returncode == 0, result.stderr
        delivered = machine.path("/srv/syncd/synced/cam1/frame_0001.jpg")
        wait_for(delivered.exists, 60, f"not delivered:\n{services.logs['syncd'].read_text()}")
        assert delivered.read_bytes() == image.read_bytes()
        assert delivered.stat().st_uid == uid(machine, "syncd")  # delivered by the service user
        assert stat.S_IMODE(delivered.stat().st_mode) == 0o640  # UMask=0027: group syncd reads the dataset
        journal = machine.path("/srv/syncd/state/syncd.db")
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600

        # By hand, as the service user: the same journal, the state directory writable.
        status = machine.run(f"runuser -u syncd -- {SYNCD} status --config {CONFIG}")
        assert status.returncode == 0, status.stderr
        assert "-> local: 1 delivered, 0 pending, 0 failed" in status.stdout, status.stdout
        check = machine.run(f"setpriv --reuid=syncd --regid=syncd --init-groups -- {SYNCD} check --config {CONFIG}")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "state directory /srv/syncd/state: writable" in check.stdout

        # after_upload = "delete": the README's "Changes" steps; the service removes what a camera
        # dropped into a folder of its own once it is delivered.
        change = (f"sed -i 's/^after_upload = \"keep\"/after_upload = \"delete\"/' {CONFIG} && "
                  f"{SYNCD} systemd-unit --config {CONFIG} > /etc/systemd/system/syncd.service && "
                  "systemctl restart syncd")
        result = machine.run(change)
        assert result.returncode == 0, result.stderr
        services.apply(machine.systemctl_calls())
        assert "ReadWritePaths=/srv/syncd/inbox /srv/syncd/state /srv/syncd/synced\n" in unit.read_text()
        assert machine.run(drop.format("0002")).returncode == 0
        dropped = machine.path("/srv/syncd/inbox/cam1/frame_0002.jpg")
        wait_for(lambda: machine.path("/srv/syncd/synced/cam1/frame_0002.jpg").exists() and not dropped.exists(), 60,
                 f"not delivered and removed:\n{services.logs['syncd'].read_text()}")
        assert services.stop("syncd") == 0, services.logs["syncd"].read_text()


def test_the_steps_are_read_from_the_readme():
    steps = readme_steps()
    assert any(step.startswith("python3 -m venv /opt/syncd") for step in steps)
    assert any("syncd init --dir /srv/syncd" in step for step in steps)
    assert any("systemctl enable --now syncd" in step for step in steps)
    assert not any(subprocess.list2cmdline([step]).startswith("sudo") for step in steps)  # as root, verbatim
