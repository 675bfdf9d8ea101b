"""What a shell, a service manager and an operator do to a process (issue 10, item 19): every case
is one line on stderr and a documented exit code, never a Python traceback.

Real `syncd` processes throughout: pipes whose reader is gone, closed standard streams, a port
already taken, a removed working directory, a user who cannot read the configuration.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.daemon_harness import REPO, DaemonProcess, _env, run_cli, wait_for, write_config
from tests.helpers import write_item


def local_config(tmp_path: Path, **daemon) -> Path:
    return write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                        daemon={"settle_seconds": 0, **daemon})


def one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


# -- the environment -----------------------------------------------------------------------------

def test_a_list_in_the_environment_that_is_not_json_names_the_variable(tmp_path):
    config = local_config(tmp_path)
    result = run_cli("check", "--config", str(config), env={"SYNCD_DAEMON__IGNORE": "*.raw"})
    assert result.returncode == 2
    assert ("environment variable SYNCD_DAEMON__IGNORE: not valid JSON (Expecting value): a list is written as "
            "JSON, e.g. SYNCD_DAEMON__IGNORE='[\"*.raw\", \"drafts\"]'") in one_line(result)
    good = run_cli("check", "--config", str(config), env={"SYNCD_DAEMON__IGNORE": '["*.raw"]'})
    assert good.returncode == 0, good.stderr


def test_a_table_in_the_environment_that_is_not_json(tmp_path):
    result = run_cli("status", "--config", str(local_config(tmp_path)), env={"SYNCD_METRICS": "off"})
    assert result.returncode == 2
    assert "environment variable SYNCD_METRICS: not valid JSON" in one_line(result)
    assert "a table is written as JSON" in result.stderr


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path):
    result = run_cli("check", "--config", str(local_config(tmp_path)), env={"SYNCD_DAEMON__SETTLE_SECONDS": "soon"})
    assert result.returncode == 2
    assert ("environment variable SYNCD_DAEMON__SETTLE_SECONDS (daemon.settle_seconds): Input should be a valid "
            "number") in one_line(result)


# -- the configuration file ----------------------------------------------------------------------

def test_a_directory_given_as_the_configuration(tmp_path):
    result = run_cli("status", "--config", str(tmp_path))
    assert result.returncode == 2
    assert f"{tmp_path}: is a directory, not a configuration file" in one_line(result)


def test_a_configuration_that_is_not_utf8(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"[daemon]\nstate_dir = \"caf\xe9\"\n")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: not UTF-8 text (byte 0xe9 on line 2): save it as UTF-8" in one_line(result)


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _python_nobody_can_run() -> str:
    """This interpreter, or the project's 3.11 one: a pyenv Python under /root (mode 0700, the
    3.10 run in CI) cannot even load its libpython as nobody. The test is about syncd's
    message, not the interpreter's version."""
    for python in (sys.executable, str(REPO / ".venv" / "bin" / "python")):
        probe = subprocess.run([*AS_NOBODY, python, "-c", "import syncd"], env=_env(None), capture_output=True,
                               timeout=60, cwd="/")
        if probe.returncode == 0:
            return python
    raise AssertionError(f"no Python that the user nobody can run syncd with ({sys.executable}, the .venv's)")


def test_a_configuration_the_user_cannot_read():
    """As the service user would meet a root-owned 0600 file (the test runs as root, so it drops
    to nobody with setpriv)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)
        path = Path(directory) / "c.toml"
        path.write_text("[daemon]\n")
        path.chmod(0o600)
        result = subprocess.run([*AS_NOBODY, _python_nobody_can_run(), "-m", "syncd", "status", "--config",
                                 str(path)], env=_env(None), capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 2, result.stderr
    assert f"{path}: permission denied: make it readable by the user running syncd" in one_line(result)


def test_a_relative_configuration_from_a_removed_working_directory(tmp_path):
    config = local_config(tmp_path)
    gone = tmp_path / "gone"
    gone.mkdir()
    code = (f"import os, sys; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); "
            "from syncd.cli import main; sys.exit(main(['status', '--config', '../syncd.toml']))")
    result = subprocess.run([sys.executable, "-c", code], env=_env(None), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "the working directory was removed; give the configuration as an absolute path" in one_line(result)
    assert config.exists()


# -- standard streams and pipes ------------------------------------------------------------------

def run_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run syncd with stdout a pipe whose reader is already gone (`syncd status | head -0`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "syncd", *args], stdout=write_end, stderr=subprocess.PIPE,
                              env=_env(None), text=True, timeout=120)
    finally:
        os.close(write_end)


def test_status_into_a_pipe_whose_reader_is_gone(tmp_path):
    config = local_config(tmp_path)
    write_item(tmp_path / "inbox", "a")
    assert run_cli("once", "--config", str(config)).returncode == 0
    for args in (("status", "--config", str(config)), ("status", "--json", "--config", str(config)), ("schema",)):
        result = run_into_a_closed_pipe(*args)
        assert result.returncode == 141, result.stderr
        assert result.stderr == ""


def test_status_piped_into_head(tmp_path):
    """The shell form: `syncd status | head -1` prints one line, and syncd says nothing."""
    config = local_config(tmp_path)
    write_item(tmp_path / "inbox", "a")
    assert run_cli("once", "--config", str(config)).returncode == 0
    command = f"{sys.executable} -m syncd status --all --config {config} | head -c 1; echo \" ${{PIPESTATUS[0]}}\""
    result = subprocess.run(["bash", "-c", command], env=_env(None), capture_output=True, text=True, timeout=60)
    assert result.stderr == ""
    assert result.stdout.split()[-1] in ("0", "141")  # 0 when status wrote everything before head left


def test_closed_standard_streams(tmp_path):
    config = local_config(tmp_path)
    write_item(tmp_path / "inbox", "a")
    for redirect in ("<&-", "<&- >&-", "<&- >&- 2>&-"):
        command = f"{sys.executable} -m syncd once --config {config} {redirect}"
        result = subprocess.run(["bash", "-c", command + "; echo exit=$?"], env=_env(None), capture_output=True,
                                text=True, timeout=120, cwd=tmp_path)
        assert "exit=0" in result.stdout, (redirect, result.stdout, result.stderr)
    assert (tmp_path / "synced" / "a.png").exists()


def test_a_read_only_working_directory(tmp_path):
    """Nothing is written to the working directory (a service's cwd is often / or read-only)."""
    config = local_config(tmp_path)
    write_item(tmp_path / "inbox", "a")
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]).returncode != 0:
        pytest.skip("needs root to mount a read-only directory")
    try:
        result = run_cli("once", "--config", str(config), cwd=ro)
        assert result.returncode == 0, result.stderr
        assert run_cli("status", "--config", str(config), cwd=ro).returncode == 0
    finally:
        subprocess.run(["umount", str(ro)])


# -- signals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15])
def test_ctrl_c_while_syncd_starts(tmp_path, delay):
    """SIGINT while Python loads syncd or reads the configuration: 130 and one line at most."""
    config = local_config(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "status", "--config", str(config)], env=_env(None),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    # -2: killed before Python set up its Ctrl-C handling (the shell shows 130 too); 0/3: status
    # was done before the signal.
    assert proc.returncode in (130, -signal.SIGINT, 0, 3), (proc.returncode, err)
    if proc.returncode == 130:
        assert err.strip() in ("", "syncd: interrupted")


def test_ctrl_c_while_a_command_waits_is_exit_130():
    """`syncd status -c /dev/stdin` waits for the configuration on a pipe nobody writes to;
    Ctrl-C there is 130 and one line (it was 0, as if the command had succeeded)."""
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "status", "--config", "/dev/stdin"], env=_env(None),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)  # loaded and blocked reading the configuration (a slow machine: the assert says so)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "syncd: interrupted\n")


def test_ctrl_c_in_the_middle_of_once_then_the_rest_exactly_once(tmp_path):
    """Ctrl-C while `once` delivers: it stops, says so, exits 130; the next `once` delivers the
    rest, and every item is delivered exactly once."""
    config = local_config(tmp_path)
    for i in range(40):
        write_item(tmp_path / "inbox", f"f{i:02d}", seed=i)
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "once", "--config", str(config)], env=_env(None),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # the first delivery: the run is under way
        lines.append(line)
        if "delivered to local" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = "".join(lines) + err
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "syncd: interrupted" in err
    again = run_cli("once", "--config", str(config))
    assert again.returncode == 0, again.stdout + again.stderr
    log = (tmp_path / "synced" / ".syncd-deliveries.jsonl").read_text()
    keys = [json.loads(line)["key"] for line in log.splitlines()]
    assert sorted(keys) == [f"f{i:02d}" for i in range(40)]


def test_sighup_stops_run_gracefully(tmp_path):
    """A closed terminal (SIGHUP) stops `syncd run` like SIGTERM: in-flight work finishes, exit 0."""
    config = local_config(tmp_path)
    with DaemonProcess(config) as daemon:
        wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.proc.wait(timeout=30) == 0
    assert "stopped" in daemon.logs() and "Traceback" not in daemon.logs()


# -- the state directory and the journal ---------------------------------------------------------

def test_a_state_directory_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("")
    config = local_config(tmp_path, state_dir=str(tmp_path / "afile" / "state"))
    for command in ("once", "run", "retry"):
        args = (command, "--failed") if command == "retry" else (command,)
        result = run_cli(*args, "--config", str(config))
        assert result.returncode == 3, (command, result.stderr)
        assert f"cannot create the state directory {tmp_path / 'afile' / 'state'}: Not a directory" in \
            one_line(result) or "cannot open the journal" in result.stderr


def test_a_damaged_journal(tmp_path):
    config = local_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "syncd.db").write_bytes(os.urandom(8192))
    for args in (("status",), ("once",), ("retry", "--failed")):
        result = run_cli(*args, "--config", str(config))
        assert result.returncode == 4, (args, result.stderr)  # the journal lost: docs/operations.md
        assert "is damaged or not a syncd journal" in one_line(result)


# -- the metrics port ----------------------------------------------------------------------------

def test_metrics_port_already_in_use(tmp_path):
    """Metrics never stop deliveries: one error line, and the daemon goes on delivering."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = local_config(tmp_path)
    config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    try:
        with DaemonProcess(config) as daemon:
            wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
            write_item(tmp_path / "inbox", "a", old=False)
            wait_for(lambda: (tmp_path / "synced" / "a.json").exists(), timeout=30, message="a delivered")
            assert daemon.stop() == 0
    finally:
        taken.close()
    logs = daemon.logs()
    assert "Traceback" not in logs
    # [metrics] listen is the deprecated name of [http] listen: the listener says it.
    assert (f"cannot serve HTTP on 127.0.0.1:{port}: Address already in use (another syncd or exporter?); "
            "deliveries go on without the status page, /healthz and /metrics") in logs


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "soon"])
def test_max_wait_must_be_seconds(tmp_path, value):
    result = run_cli("once", "--max-wait", value, "--config", str(local_config(tmp_path)))
    assert result.returncode == 2
    assert "syncd once: error: argument --max-wait:" in one_line(result).splitlines()[-1]


# -- exit codes as documented --------------------------------------------------------------------

def test_status_exit_codes_are_the_documented_ones(tmp_path):
    config = local_config(tmp_path)
    result = run_cli("status", "--config", str(config))
    assert result.returncode == 3 and "no journal" in one_line(result)
    write_item(tmp_path / "inbox", "a")
    assert run_cli("once", "--config", str(config)).returncode == 0
    ok = run_cli("status", "--json", "--config", str(config))
    assert ok.returncode == 0 and json.loads(ok.stdout)["folders"][0]["targets"][0]["delivered"] == 1
    assert run_cli("status", "--config", str(tmp_path / "missing.toml")).returncode == 2
    table = (REPO / "docs" / "operations.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| `syncd status"))
    assert row.rstrip(" |").endswith("| 0; 2; 3 no journal yet (syncd has not run with this configuration); "
                                      "4 the journal was lost or is damaged")
    assert "Every command also exits with **130** when Ctrl-C" in table and "**141** when the reader" in table
