"""``syncd init --dir DIR``: a directory ready for the service.

Writes ``DIR/config.toml`` (the shipped example, commented, with absolute paths: the inbox
``DIR/inbox``, the local dataset ``DIR/synced`` and the state directory ``DIR/state`` unless
another is given) and creates those directories so that:

- the service user owns the state directory and the dataset (mode 0750, its own group);
- the inbox belongs to the service user and a *writer group*, mode 2770: members of the group
  (a camera's user, an upload account) create files in it, the setgid bit gives everything
  created inside the writer group, and the service user (a member too, see systemd/syncd.sysusers)
  can delete what it delivered when ``after_upload = "delete"``;
- the configuration is readable by the service user and writable only by its owner.

Run as root, the defaults are the service user ``syncd`` and the writer group
``syncd-writers`` (both made by the shipped sysusers.d file); run as anyone else, yourself and
your primary group. An existing configuration is never overwritten.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path

from syncd.errors import ConfigError, LocalError
from syncd.install.shipped import shipped_text

SERVICE_USER = "syncd"
WRITER_GROUP = "syncd-writers"
INBOX_MODE = 0o2770
PRIVATE_MODE = 0o750


@dataclass
class InitPlan:
    """What ``syncd init`` makes, resolved to absolute paths and numeric ids."""

    directory: Path
    state_dir: Path
    user: pwd.struct_passwd
    group: grp.struct_group
    inbox_mode: int = INBOX_MODE
    done: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.directory / "config.toml"

    @property
    def inbox(self) -> Path:
        return self.directory / "inbox"

    @property
    def dataset(self) -> Path:
        return self.directory / "synced"


def plan(directory: str, *, user: str | None, group: str | None, mode: str | None, state_dir: str | None) -> InitPlan:
    """Resolve the command line into an ``InitPlan``; ``ConfigError`` for an unknown user,
    group or mode, or an existing configuration."""
    root = os.geteuid() == 0
    account = _user(user or (SERVICE_USER if root else None))
    writers = _group(group or (WRITER_GROUP if root else None), account)
    try:
        inbox_mode = int(mode, 8) if mode else INBOX_MODE
    except ValueError:
        raise ConfigError(f"--mode {mode}: not an octal mode such as 2770") from None
    if not 0 <= inbox_mode <= 0o7777:
        raise ConfigError(f"--mode {mode}: not an octal mode such as 2770")
    base = Path(directory).expanduser().absolute()
    state = Path(state_dir).expanduser().absolute() if state_dir else base / "state"
    result = InitPlan(base, state, account, writers, inbox_mode)
    if result.config.exists():
        raise ConfigError(f"{result.config} exists; syncd init never overwrites a configuration "
                          "(remove it first, or choose another --dir)")
    return result


def render_config(result: InitPlan) -> str:
    """The shipped example with this directory's absolute paths; other values as shipped."""
    text = shipped_text("config.example.toml")
    wanted = {("daemon", "state_dir"): result.state_dir, ("folders", "path"): result.inbox,
              ("targets.local", "path"): result.dataset}
    out, table, replaced = [], "", set()
    for line in text.splitlines():
        header = re.match(r"\[\[?([\w.-]+)\]\]?", line)
        if header:
            table = header.group(1)
        key = re.match(r"(\w+)(\s*=\s*)(\"[^\"]*\")(.*)$", line)
        if key and (table, key.group(1)) in wanted and (table, key.group(1)) not in replaced:
            replaced.add((table, key.group(1)))
            value = json.dumps(str(wanted[table, key.group(1)]))  # a JSON string is a TOML basic string
            line = f"{key.group(1)}{key.group(2)}{value}{key.group(4)}"
        out.append(line)
    missing = set(wanted) - replaced
    if missing:  # the example changed shape; tests/install catches this before a release
        keys = ", ".join(f"[{table}] {key}" for table, key in sorted(missing))
        raise LocalError(f"config.example.toml has no {keys}; reinstall syncd")
    intro = (f"# Written by `syncd init --dir {result.directory}`: the paths below are absolute; the\n"
             f"# inbox is writable by the group {result.group.gr_name}. Install the service with\n"
             f"# `syncd systemd-unit --config {result.config}` (README: Running under systemd).\n#\n")
    return intro + "\n".join(out) + "\n"


def create(result: InitPlan) -> list[str]:
    """Make the directories and write the configuration; returns one line per thing done.

    ``LocalError`` when a directory cannot be made or given away (not root)."""
    uid, gid = result.user.pw_uid, result.user.pw_gid
    text = render_config(result)
    lines = []
    _mkdir(result.directory, 0o755, None, None)
    for path, owner_gid, mode, what in (
        (result.state_dir, gid, PRIVATE_MODE, "state directory (journal, lock)"),
        (result.dataset, gid, PRIVATE_MODE, "local dataset (target 'local')"),
        (result.inbox, result.group.gr_gid, result.inbox_mode, "inbox, watched"),
    ):
        _mkdir(path, mode, uid, owner_gid)
        lines.append(f"{path}: {what}; owner {result.user.pw_name}, group {_group_name(owner_gid)}, mode {mode:o}")
    try:
        fd = os.open(result.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        raise ConfigError(f"{result.config} exists; syncd init never overwrites a configuration") from None
    except OSError as exc:
        raise LocalError(f"cannot write {result.config}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    _give(result.config, -1, gid)  # the service user's group reads it; only the owner writes
    os.chmod(result.config, 0o640)
    lines.append(f"{result.config}: configuration; group {_group_name(gid)}, mode 640")
    return lines


def next_steps(result: InitPlan) -> str:
    """What to do after ``syncd init`` (printed by the command)."""
    group = result.group.gr_name
    return "\n".join([
        "",
        f"Writers: add each user that drops files to the group {group} (usermod -aG {group} camera);",
        "  they need a umask of 002 so that syncd may delete what it delivered (after_upload = \"delete\").",
        "  Another group or mode: syncd init --group NAME --mode 2775 (in a new --dir, or after removing config.toml).",
        "Next:",
        f"  edit {result.config} (folders, targets; README: Configuration)",
        f"  syncd check --config {result.config}",
        f"  syncd systemd-unit --config {result.config} > /etc/systemd/system/syncd.service",
        "  systemctl daemon-reload && systemctl enable --now syncd",
    ])


def _user(name: str | None) -> pwd.struct_passwd:
    if name is None:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(name)
    except KeyError:
        hint = (" (create it: syncd systemd-unit --sysusers | systemd-sysusers -)"
                if name == SERVICE_USER else "")
        raise ConfigError(f"--user {name}: no such user{hint}") from None


def _group(name: str | None, user: pwd.struct_passwd) -> grp.struct_group:
    if name is None:
        return grp.getgrgid(user.pw_gid)
    try:
        return grp.getgrnam(name)
    except KeyError:
        hint = (" (create it: syncd systemd-unit --sysusers | systemd-sysusers -)"
                if name == WRITER_GROUP else f" (create it: groupadd --system {name})")
        raise ConfigError(f"--group {name}: no such group{hint}") from None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _mkdir(path: Path, mode: int, uid: int | None, gid: int | None) -> None:
    """Make ``path`` (and its parents); give it ``uid``/``gid`` and ``mode`` (uid None: a new
    directory gets ``mode``, an existing one is left as it is)."""
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalError(f"cannot create {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise LocalError(f"{path} exists and is not a directory")
    if uid is not None:
        _give(path, uid, gid)
        os.chmod(path, mode)  # after chown, which clears the setgid bit
    elif not existed:
        os.chmod(path, mode)  # whatever the umask: the service user must reach the inside


def _give(path: Path, uid: int, gid: int | None) -> None:
    try:
        os.chown(path, uid, -1 if gid is None else gid)
    except PermissionError:
        raise LocalError(f"cannot give {path} to another user or group: run syncd init as root") from None
