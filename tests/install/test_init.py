"""``syncd init --dir DIR``: a configuration with absolute paths and directories the service
user owns, with an inbox a writer group can drop files into."""

from __future__ import annotations

import grp
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from syncd.config import load_config
from tests.daemon_harness import REPO, run_cli

# A service user and a writer group (not its own) that exist on every Debian/Ubuntu image.
USER = pwd.getpwnam("nobody")
GROUP = grp.getgrnam("users")


@pytest.fixture
def open_tmp():
    """A directory other users can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="syncd-init-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def init(directory: Path, *args: str):
    return run_cli("init", "--dir", str(directory), "--user", USER.pw_name, "--group", GROUP.gr_name, *args)


def owner_group_mode(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def test_init_writes_an_absolute_configuration_and_gives_the_folders_to_the_service_user(tmp_path):
    directory = tmp_path / "srv" / "syncd"
    result = init(directory)
    assert result.returncode == 0, result.stderr
    config = load_config(directory / "config.toml")
    assert config.daemon.state_dir == directory / "state"
    assert config.folders[0].path == directory / "inbox"
    assert config.target_settings["local"].path == directory / "synced"
    assert owner_group_mode(directory / "state") == (USER.pw_uid, USER.pw_gid, 0o750)
    assert owner_group_mode(directory / "synced") == (USER.pw_uid, USER.pw_gid, 0o750)
    assert owner_group_mode(directory / "inbox") == (USER.pw_uid, GROUP.gr_gid, 0o2770)
    assert owner_group_mode(directory / "config.toml") == (0, USER.pw_gid, 0o640)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    # The output says which group and mode the inbox got, and what comes next.
    inbox_line = f"{directory / 'inbox'}: inbox, watched; owner {USER.pw_name}, group {GROUP.gr_name}, mode 2770"
    assert inbox_line in result.stdout
    assert f"usermod -aG {GROUP.gr_name} camera" in result.stdout
    assert f"syncd systemd-unit --config {directory / 'config.toml'}" in result.stdout
    check = run_cli("check", "--config", str(directory / "config.toml"))
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_other_option_is_the_shipped_example(tmp_path):
    directory = tmp_path / "d"
    assert init(directory).returncode == 0
    example = load_config(REPO / "config.example.toml")
    config = load_config(directory / "config.toml")
    assert config.daemon.model_dump(exclude={"state_dir"}) == example.daemon.model_dump(exclude={"state_dir"})
    assert config.folders[0].model_dump(exclude={"path"}) == example.folders[0].model_dump(exclude={"path"})
    assert config.targets["local"] | {"path": None} == example.targets["local"] | {"path": None}
    text = (directory / "config.toml").read_text()
    assert text.startswith(f"# Written by `syncd init --dir {directory}`")
    assert "# [targets.nucleus]" in text  # the commented platform examples are kept


def test_init_never_overwrites_a_configuration(tmp_path):
    assert init(tmp_path).returncode == 0
    (tmp_path / "config.toml").write_text("# mine\n")
    again = init(tmp_path)
    assert again.returncode == 2
    assert f"{tmp_path / 'config.toml'} exists; syncd init never overwrites a configuration" in again.stderr
    assert (tmp_path / "config.toml").read_text() == "# mine\n"


def test_unknown_user_group_or_mode_is_exit_2_and_creates_nothing(tmp_path):
    cases = [
        (["--user", "no-such-user-syncd"], "--user no-such-user-syncd: no such user"),
        (["--user", "nobody", "--group", "no-such-group-syncd"],
         "--group no-such-group-syncd: no such group (create it: groupadd --system no-such-group-syncd)"),
        (["--user", "nobody", "--group", GROUP.gr_name, "--mode", "rwx"], "--mode rwx: not an octal mode such as 2770"),
    ]
    for args, message in cases:
        result = run_cli("init", "--dir", str(tmp_path / "d"), *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "d").exists()


def test_state_directory_and_inbox_mode_can_be_chosen(tmp_path):
    result = init(tmp_path / "d", "--state-dir", str(tmp_path / "var" / "lib" / "syncd"), "--mode", "2775")
    assert result.returncode == 0, result.stderr
    assert load_config(tmp_path / "d" / "config.toml").daemon.state_dir == tmp_path / "var" / "lib" / "syncd"
    assert owner_group_mode(tmp_path / "var" / "lib" / "syncd") == (USER.pw_uid, USER.pw_gid, 0o750)
    assert owner_group_mode(tmp_path / "d" / "inbox") == (USER.pw_uid, GROUP.gr_gid, 0o2775)


def as_ids(uid: int, gid: int, groups: list[int], command: str) -> subprocess.CompletedProcess:
    ids = [f"--reuid={uid}", f"--regid={gid}", f"--groups={','.join(map(str, groups)) or '-'}"]
    if not groups:
        ids[-1] = "--clear-groups"
    return subprocess.run(["setpriv", *ids, "--", "sh", "-c", command], capture_output=True, text=True)


def test_a_writer_drops_files_others_cannot_and_the_service_user_removes_what_was_delivered(open_tmp):
    """The inbox's owner, group and mode at work, with uid numbers of no user (setpriv): only the
    writer group counts. Files and folders made inside keep the group (setgid)."""
    directory = open_tmp / "d"
    assert init(directory).returncode == 0
    inbox = directory / "inbox"
    camera = as_ids(4242, 4242, [GROUP.gr_gid], f"umask 002 && mkdir {inbox}/cam1 && echo x > {inbox}/cam1/f.jpg")
    assert camera.returncode == 0, camera.stderr
    assert (inbox / "cam1").stat().st_gid == GROUP.gr_gid and (inbox / "cam1" / "f.jpg").stat().st_gid == GROUP.gr_gid
    stranger = as_ids(4343, 4343, [], f"echo x > {inbox}/g.jpg")
    assert stranger.returncode != 0 and "Permission denied" in stranger.stderr
    service = as_ids(USER.pw_uid, USER.pw_gid, [GROUP.gr_gid], f"rm {inbox}/cam1/f.jpg")  # after_upload = "delete"
    assert service.returncode == 0, service.stderr
