"""``syncd systemd-unit --config FILE``: the shipped unit, fitted to one installation.

The shipped unit (systemd/syncd.service) is the template; these lines are set from the
configuration and the running environment, everything else is kept as shipped:

- ``ExecStart=`` runs this environment's ``syncd`` (or ``python -m syncd``) with the absolute
  configuration path, so the state directory is the configuration's: ``syncd status`` and
  ``syncd check`` run by hand open the same journal.
- ``User=`` the service user.
- ``ReadWritePaths=`` what the daemon writes: the state directory, each local target's dataset,
  the folders with ``after_upload = "delete"`` and the metrics textfile's directory.
- ``LoadCredential=`` one per ``api_key_env`` of a used target, from the credentials directory.
- ``ProtectHome=`` ``read-only`` instead of ``yes`` when something it needs (the interpreter,
  the configuration, a folder) is under /home, /root or /run/user.

``render_unit`` also returns warnings: paths that do not exist yet (systemd refuses to start a
unit whose ReadWritePaths= is missing), credential files that are missing, and files the service
user cannot reach with the permissions they have now.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import sys
from pathlib import Path

from syncd.config import Config
from syncd.errors import LocalError
from syncd.install.shipped import shipped_text

CREDENTIALS_DIR = Path("/etc/syncd/credentials")
HOMES = (Path("/home"), Path("/root"), Path("/run/user"))
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))  # PrivateTmp=yes: the service sees empty ones


def syncd_command() -> list[str]:
    """How this environment starts syncd: the ``syncd`` script next to the interpreter, else
    ``python -m syncd``. The interpreter's path is kept as it is (a venv's bin/python)."""
    script = Path(sys.executable).parent / "syncd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "syncd"]


def writable_paths(config: Config) -> list[Path]:
    """The directories the daemon writes to, outermost only, in order."""
    paths = [config.daemon.state_dir]
    paths += [settings.path for settings in config.target_settings.values() if settings.platform == "local"]
    paths += [folder.path for folder in config.folders if folder.after_upload == "delete"]
    if config.metrics.textfile is not None:
        paths.append(config.metrics.textfile.parent)
    unique: list[Path] = []
    for path in sorted(set(paths)):
        if not any(path.is_relative_to(outer) for outer in unique):
            unique.append(path)
    return unique


def credentials(config: Config, directory: Path) -> dict[str, Path]:
    """api_key_env name -> credential file, for every target a folder uses."""
    used = config.folder_targets()
    names = {getattr(settings, "api_key_env", None)
             for name, settings in config.target_settings.items() if name in used}
    return {name: directory / name for name in sorted(n for n in names if n)}


def render_unit(config: Config, *, user: str = "syncd", command: list[str] | None = None,
                credentials_dir: Path = CREDENTIALS_DIR) -> tuple[str, list[str]]:
    """The unit text for ``config`` and the warnings to show with it (see the module docstring)."""
    command = command or syncd_command()
    assert config.config_path is not None, "render_unit needs a Config from load_config"
    writable = writable_paths(config)
    keys = credentials(config, credentials_dir)
    visible = list(dict.fromkeys([config.config_path, *writable, *(folder.path for folder in config.folders)]))
    interpreter = _interpreter(Path(command[0]))
    needed = [Path(command[0]), *visible]
    if interpreter:
        needed += [interpreter.parent.parent, interpreter.resolve()]  # the venv, the real interpreter
    homes = sorted({str(home) for path in needed for home in HOMES if path.is_relative_to(home)})
    generated = {
        "ExecStart": [f"ExecStart={_exec_args([*command, 'run', '--config', str(config.config_path)])}"],
        "User": [f"User={_value(user)}"],
        "ReadWritePaths": [f"ReadWritePaths={' '.join(_path(p) for p in writable)}"],
        "ProtectHome": [f"ProtectHome={'read-only' if homes else 'yes'}"],
    }
    credential_lines = [f"LoadCredential={name}:{_path(path)}" for name, path in keys.items()]
    text = _fill(shipped_text("syncd.service"), generated, credential_lines)

    warnings = []
    if homes:
        warnings.append(f"ProtectHome=read-only: the service needs files under {', '.join(homes)}")
    warnings += [f"{path} is under {tmp}, which the service does not see (PrivateTmp=yes): choose another directory"
                 for path in visible for tmp in PRIVATE_TMP if path.is_relative_to(tmp)]
    warnings += [f"{path} does not exist: create it before starting the unit (syncd init does)"
                 for path in writable if not path.exists()]
    warnings += [f"{path} is missing: put the {name} key in it (install -Dm600 /dev/null {path}; "
                 "then write the key) or the unit will not start" for name, path in keys.items() if not path.exists()]
    warnings += _unreachable(user, config.config_path, interpreter.resolve() if interpreter else None, writable)
    return text, warnings


def _fill(template: str, generated: dict[str, list[str]], credential_lines: list[str]) -> str:
    """``template`` with the first line of each key in ``generated`` replaced by its lines (later
    ones dropped), any LoadCredential= replaced by ``credential_lines`` before EnvironmentFile=."""
    lines, seen = [], set()
    for line in template.splitlines():
        key = line.split("=", 1)[0] if "=" in line and not line.startswith("#") else None
        if key == "EnvironmentFile":
            lines += credential_lines
            seen.add("LoadCredential")
        if key in generated:
            if key not in seen:
                lines += generated[key]
            seen.add(key)
        elif key != "LoadCredential":
            lines.append(line)
    missing = {*generated, "LoadCredential"} - seen
    if missing:  # the shipped unit changed shape; tests/install catches this before a release
        raise LocalError(f"the shipped syncd.service has no {', '.join(sorted(missing))} line; reinstall syncd")
    return "\n".join(lines) + "\n"


def _interpreter(program: Path) -> Path | None:
    """The Python that ``program`` (python itself or a script with a #! line) runs, if known."""
    if program.name.startswith("python"):
        return program
    try:
        with program.open("rb") as script:
            first = script.readline(512)
    except OSError:
        return None
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    return Path(words[0]) if words and Path(words[0]).name.startswith("python") else None


def _unreachable(user: str, config_path: Path, interpreter: Path | None, writable: list[Path]) -> list[str]:
    """Files the service user cannot read, run or write with today's owners and modes (ACLs and
    the unit's sandbox aside)."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return [f"user {user} does not exist yet: create it before starting the unit (README: Running under systemd)"]
    if account.pw_uid == 0:
        return []
    gids = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    out = []
    checks = [(config_path, stat.S_IROTH, "read the configuration")]
    if interpreter:
        checks.append((interpreter, stat.S_IXOTH, "run the Python interpreter"))
    checks += [(path, stat.S_IWOTH | stat.S_IXOTH, "write") for path in writable]
    for path, want, what in checks:
        blocked = _blocked(path, want, account.pw_uid, gids)
        if blocked:
            out.append(f"user {user} cannot {what} {path}: {blocked}")
    return out


def _blocked(path: Path, want: int, uid: int, gids: set[int]) -> str | None:
    """Why ``uid``/``gids`` lack ``want`` (other-class bits) on ``path`` or search on a parent; None if not."""
    for part, bits in [(parent, stat.S_IXOTH) for parent in reversed(path.parents)] + [(path, want)]:
        try:
            info = part.stat()
        except OSError:
            return None  # missing: reported elsewhere
        mode = stat.S_IMODE(info.st_mode)
        shift = 6 if info.st_uid == uid else 3 if info.st_gid in gids else 0
        if (mode >> shift) & bits != bits:
            return f"{part} is mode {mode:o}, owner {info.st_uid}, group {info.st_gid}"
    return None


def _value(text: str) -> str:
    """A value for a systemd setting: '%' is the specifier character."""
    return text.replace("%", "%%")


def _path(path: Path) -> str:
    text = _value(str(path))
    return _quote(text) if re.search(r"[\s\"'\\]", text) else text


def _exec_args(args: list[str]) -> str:
    """An ExecStart= command line: '%' is special, and '$' in the arguments (not in the program's
    path, which systemd does not expand); words with spaces or quotes are quoted."""
    out = []
    for index, arg in enumerate(args):
        text = _value(arg) if index == 0 else _value(arg).replace("$", "$$")
        out.append(_quote(text) if not text or re.search(r"[\s\"'\\;]", text) else text)
    return " ".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
