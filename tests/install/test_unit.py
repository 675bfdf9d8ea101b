"""``syncd systemd-unit``: the shipped unit fitted to an installation, hardened, and accepted by
systemd-analyze."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.install.unit import render_unit
from tests.daemon_harness import REPO, run_cli

SHIPPED = REPO / "systemd" / "syncd.service"
COMMAND = ["/opt/syncd/bin/syncd"]
SET_FROM_CONFIG = {"ExecStart", "User", "ReadWritePaths", "ProtectHome", "LoadCredential"}


def analyze(*args: str) -> subprocess.CompletedProcess:
    program = shutil.which("systemd-analyze")
    assert program, "systemd-analyze is needed (Debian package systemd); tests/install.sh installs it"
    return subprocess.run([program, *args], capture_output=True, text=True)


def exposure(unit: Path) -> float:
    result = analyze("security", "--offline=yes", str(unit))
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([0-9.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def settings(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in text.splitlines() if "=" in line and not line.startswith("#")]


def write_config(directory: Path, extra: str = "", folder: str = "") -> Path:
    path = directory / "config.toml"
    path.write_text(f'[daemon]\nstate_dir = "state"\n[[folders]]\npath = "inbox"\ntargets = ["local"]\n{folder}'
                    f'[targets.local]\nplatform = "local"\npath = "synced"\n{extra}')
    return path


def test_the_unit_runs_this_installation_with_the_configuration_and_its_state_directory(tmp_path):
    config = load_config(write_config(tmp_path))
    text, _ = render_unit(config, user="syncd", command=COMMAND)
    values = dict(settings(text))
    assert values["ExecStart"] == f"/opt/syncd/bin/syncd run --config {tmp_path / 'config.toml'}"
    assert values["User"] == "syncd"
    assert values["ReadWritePaths"] == f"{tmp_path / 'state'} {tmp_path / 'synced'}"  # not the inbox: kept files
    assert values["ProtectHome"] == "yes"
    assert "StateDirectory" not in values and "SYNCD_DAEMON__STATE_DIR" not in text  # the config says where


def test_everything_else_is_the_shipped_unit(tmp_path):
    text, _ = render_unit(load_config(write_config(tmp_path)), command=COMMAND)
    shipped = [kv for kv in settings(SHIPPED.read_text()) if kv[0] not in SET_FROM_CONFIG]
    assert [kv for kv in settings(text) if kv[0] not in SET_FROM_CONFIG] == shipped


def test_the_unit_is_hardened_to_an_exposure_of_1_or_less(tmp_path):
    text, _ = render_unit(load_config(write_config(tmp_path)), command=COMMAND)
    (tmp_path / "syncd.service").write_text(text)
    assert exposure(tmp_path / "syncd.service") <= 1.0
    assert exposure(SHIPPED) <= 1.0


def test_the_dataset_is_readable_by_the_service_group_never_by_others():
    """Delivered files follow the umask (issue 10, item 7): 0640 under the unit, 0600 was too
    private for a dataset other users read; the journal is 0600 whatever the umask."""
    assert ("UMask", "0027") in settings(SHIPPED.read_text())


def test_only_link_local_and_multicast_addresses_are_denied():
    values = settings(SHIPPED.read_text())
    assert ("IPAddressDeny", "any") in values
    allowed = [ipaddress.ip_network(n) for key, value in values if key == "IPAddressAllow" for n in value.split()]
    for version, universe, denied in ((4, "0.0.0.0/0", ["169.254.0.0/16", "224.0.0.0/4"]),
                                      (6, "::/0", ["fe80::/10", "ff00::/8"])):
        rest = [ipaddress.ip_network(universe)]
        for net in map(ipaddress.ip_network, denied):
            rest = [part for n in rest for part in (n.address_exclude(net) if net.subnet_of(n) else [n])]
        assert sorted(n for n in allowed if n.version == version) == sorted(ipaddress.collapse_addresses(rest))


def test_deleting_folders_the_local_dataset_and_the_metrics_file_are_writable_nested_ones_once(tmp_path):
    extra = '[targets.copy]\nplatform = "local"\npath = "state/copy"\n'
    folder = 'after_upload = "delete"\n[[folders]]\npath = "kept"\ntargets = ["copy"]\nkey_prefix = "k/"\n'
    path = write_config(tmp_path, extra=extra, folder=folder)
    metrics = f'[metrics]\ntextfile = "{tmp_path}/prom/syncd.prom"\n'
    path.write_text(path.read_text().replace("[daemon]", metrics + "[daemon]"))
    text, _ = render_unit(load_config(path), command=COMMAND)
    expected = " ".join(str(tmp_path / p) for p in ("inbox", "prom", "state", "synced"))
    assert dict(settings(text))["ReadWritePaths"] == expected


def test_api_keys_come_from_credential_files_for_the_targets_in_use(tmp_path):
    nucleus = '[targets.nucleus]\nplatform = "nucleus"\ndataset_id = "ds_1"\n'
    unused = '[targets.dl]\nplatform = "dataloop"\ndataset_id = "65a1"\n'
    path = write_config(tmp_path, extra=nucleus + unused)
    path.write_text(path.read_text().replace('targets = ["local"]', 'targets = ["local", "nucleus"]'))
    text, warnings = render_unit(load_config(path), command=COMMAND, credentials_dir=tmp_path / "creds")
    key_file = tmp_path / "creds" / "NUCLEUS_API_KEY"
    assert [v for k, v in settings(text) if k == "LoadCredential"] == [f"NUCLEUS_API_KEY:{key_file}"]
    assert any(w.startswith(f"{key_file} is missing: put the NUCLEUS_API_KEY key in it") for w in warnings)


def test_paths_with_spaces_and_specifiers_survive_and_systemd_analyze_verify_accepts_the_unit(tmp_path):
    home = tmp_path / "my $data %n"
    home.mkdir()
    (home / "state").mkdir()
    (home / "synced").mkdir()
    program = home / "bin" / "syncd"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    text, _ = render_unit(load_config(write_config(home)), user="root", command=[str(program)])
    values = dict(settings(text))
    # systemd expands $ in the arguments, not in the program's path
    assert values["ExecStart"] == (f'"{tmp_path}/my $data %%n/bin/syncd" run '
                                   f'--config "{tmp_path}/my $$data %%n/config.toml"')
    assert values["ReadWritePaths"] == f'"{tmp_path}/my $data %%n/state" "{tmp_path}/my $data %%n/synced"'
    unit = tmp_path / "syncd.service"
    unit.write_text(text)
    result = analyze("verify", str(unit))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_warnings_name_what_would_stop_the_service(tmp_path):
    config_path = write_config(tmp_path)
    config_path.chmod(0o600)
    text, warnings = render_unit(load_config(config_path), user="nobody", command=COMMAND)
    state = tmp_path / "state"
    assert f"{state} does not exist: create it before starting the unit (syncd init does)" in warnings
    hidden = f"{config_path} is under /tmp, which the service does not see (PrivateTmp=yes): choose another directory"
    assert hidden in warnings
    assert any(w.startswith(f"user nobody cannot read the configuration {config_path}: ") for w in warnings), warnings
    _, warnings = render_unit(load_config(config_path), user="no-such-user-syncd", command=COMMAND)
    assert any(w.startswith("user no-such-user-syncd does not exist yet") for w in warnings)


def test_a_python_under_a_home_makes_home_read_only(tmp_path):
    program = tmp_path / "syncd"
    program.write_text("#!/home/me/venv/bin/python\n")
    text, warnings = render_unit(load_config(write_config(tmp_path)), command=[str(program)])
    assert dict(settings(text))["ProtectHome"] == "read-only"
    assert "ProtectHome=read-only: the service needs files under /home" in warnings


def test_the_command_prints_the_unit_and_the_sysusers_file(tmp_path):
    result = run_cli("systemd-unit", "--config", str(write_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert f"run --config {tmp_path / 'config.toml'}\n" in result.stdout and "[Install]" in result.stdout
    assert "syncd systemd-unit: warning: " in result.stderr  # e.g. /tmp, missing directories
    sysusers = run_cli("systemd-unit", "--sysusers")
    assert sysusers.returncode == 0 and sysusers.stdout == (REPO / "systemd" / "syncd.sysusers").read_text()


@pytest.mark.parametrize("args", [("systemd-unit",), ("systemd-unit", "--config", "/nonexistent/syncd.toml")])
def test_without_a_usable_configuration_it_is_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
