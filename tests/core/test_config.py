"""Configuration: the example works, and every kind of mistake names the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.errors import ConfigError
from tests.daemon_harness import REPO, run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


GOOD = """
[[folders]]
path = "inbox"
targets = ["local"]
[targets.local]
platform = "local"
path = "out"
"""


def test_example_config_loads_and_resolves_paths_next_to_it(tmp_path):
    shutil.copy(REPO / "config.example.toml", tmp_path / "syncd.toml")
    config = load_config(tmp_path / "syncd.toml")
    assert config.folders[0].path == tmp_path / "inbox"
    assert config.target_settings["local"].path == tmp_path / "synced"
    assert config.daemon.state_dir == tmp_path / ".syncd"
    assert config.daemon.settle_seconds == 2.0


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml")


def test_broken_toml_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.toml: not valid TOML"):
        load_config(write(tmp_path, "[daemon\n"))


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace('path = "inbox"', 'path = "inbox"\npoll_secs = 3'), r"folders\[0\]\.poll_secs: unknown key"),
        ("[daemon]\nsettle_seconds = \"soon\"\n" + GOOD, r"daemon\.settle_seconds: Input should be a valid number"),
        (GOOD.replace('targets = ["local"]', 'targets = ["nucleus"]'),
         r"folders\[0\]\.targets: unknown target 'nucleus'"),
        (GOOD.replace('platform = "local"', 'platform = "s3"'),
         r"targets\.local\.platform: unknown platform 's3'; known platforms: .*local.*nucleus"),
        (GOOD.replace('path = "out"', 'pth = "out"'), r"targets\.local\.pth: unknown key"),
        (GOOD.replace('path = "out"', ""), r"targets\.local\.path: required key is missing"),
        ("[daemon]\n", r"folders: required key is missing"),
    ],
)
def test_mistakes_name_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNCD_DAEMON__SETTLE_SECONDS", "7.5")
    monkeypatch.setenv("SYNCD_DAEMON__STATE_DIR", str(tmp_path / "elsewhere"))
    config = load_config(write(tmp_path, GOOD))
    assert config.daemon.settle_seconds == 7.5
    assert config.daemon.state_dir == tmp_path / "elsewhere"


def test_two_folders_feeding_one_target_need_distinct_prefixes(tmp_path):
    text = GOOD + '\n[[folders]]\npath = "other"\ntargets = ["local"]\n'
    with pytest.raises(ConfigError, match=r"folders\[1\]\.key_prefix"):
        load_config(write(tmp_path, text))


def test_cli_exit_code_2_on_config_error_and_config_from_env(tmp_path):
    bad = write(tmp_path, "[daemon]\nbogus = 1\n" + GOOD)
    result = run_cli("check", env={"SYNCD_CONFIG": str(bad)})
    assert result.returncode == 2
    assert "daemon.bogus: unknown key" in result.stderr


def test_check_reports_ok_targets(tmp_path):
    good = write(tmp_path, GOOD)
    result = run_cli("check", "--config", str(good))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "target local (local): ok" in result.stdout


def test_commented_platform_examples_in_the_example_config_are_valid(tmp_path):
    """Every [targets.*] example in config.example.toml validates when uncommented."""
    from syncd.config import tomllib
    from syncd.targets import target_class

    lines = (REPO / "config.example.toml").read_text().splitlines()
    examples: dict[str, dict] = {}
    block: list[str] = []
    for line in lines + [""]:
        text = line[2:] if line.startswith("# ") else ("" if line == "#" else None)
        if text is not None and (text.startswith("[targets.") or (block and not text.startswith("#") and text)):
            block.append(text)
            continue
        if block:
            examples.update(tomllib.loads("\n".join(block))["targets"])
            block = []
    platforms = {t["platform"] for t in examples.values()}
    assert platforms == {"nucleus", "edgeimpulse", "edgeimpulse-org", "dataloop", "redbrick"}
    for name, table in examples.items():
        target_class(table["platform"]).Settings(**table)


NUCLEUS = GOOD.replace('targets = ["local"]', 'targets = ["local", "nucleus"]') + """
[targets.nucleus]
platform = "nucleus"
dataset_id = "ds_1"
"""


@pytest.mark.parametrize("name", ["../../../../etc/hostname", "KEY/x", "", "1KEY", "MY KEY", "KEY=x", "ключ"])
def test_api_key_env_must_be_an_environment_variable_name(tmp_path, name):
    """A path in api_key_env would read a file outside $CREDENTIALS_DIRECTORY (issue 10, item 3)."""
    text = NUCLEUS + f'api_key_env = "{name}"\n'
    with pytest.raises(ConfigError, match=r"c\.toml: targets\.nucleus\.api_key_env: .*environment variable name"):
        load_config(write(tmp_path, text))


def test_api_key_env_accepts_usual_names(tmp_path):
    config = load_config(write(tmp_path, NUCLEUS + 'api_key_env = "_Scale_KEY_2"\n'))
    assert config.target_settings["nucleus"].api_key_env == "_Scale_KEY_2"


def test_read_secret_refuses_a_path_as_a_credential_name(tmp_path):
    from syncd.errors import FatalTargetError
    from syncd.targets.base import read_secret

    (tmp_path / "creds").mkdir()
    (tmp_path / "secret").write_text("outside")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    with pytest.raises(FatalTargetError, match="not an environment variable name"):
        read_secret("../secret", target="t", env=env)


def test_an_unreadable_credential_file_is_a_clear_error(tmp_path):
    from syncd.errors import FatalTargetError
    from syncd.targets.base import read_secret

    (tmp_path / "KEY").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(FatalTargetError, match=r"credential file .*KEY cannot be read"):
        read_secret("KEY", target="t", env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
