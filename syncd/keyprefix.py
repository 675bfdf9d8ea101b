"""A folder's ``key_prefix``: one spelling for each prefix, and the placeholders that let one
configuration file serve a fleet (``{hostname}``, ``{machine_id}``, expanded once at load by
syncd.config)."""

from __future__ import annotations

import socket
import string
from pathlib import Path

MACHINE_ID = Path("/etc/machine-id")
KEY_PREFIX_PLACEHOLDERS = ("hostname", "machine_id")


def normalise_key_prefix(value: str) -> str:
    """``value`` as one spelling: ``/`` between components (a backslash is one too), no empty
    or ``.`` components, no trailing ``/`` (``"cam/"``, ``"./cam"`` and ``"cam"`` are the same
    prefix; ``"a\\b"`` and ``"a/./b"`` are ``"a/b"``). Raises ValueError for an absolute
    prefix, ``..``, or characters a key cannot hold."""
    if not value.isprintable():
        raise ValueError(f"key_prefix {value!r} holds a control character")
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or ".." in parts:
        raise ValueError(f"key_prefix {value!r} must be a relative path without '..'")
    return "/".join(part for part in parts if part not in ("", "."))


def expand_key_prefix(template: str, *, machine_id_file: Path = MACHINE_ID) -> str:
    """``template`` with ``{hostname}`` and ``{machine_id}`` replaced by this machine's values.

    ``{hostname}`` is the host name (``socket.gethostname()``), ``{machine_id}`` the 32 hex
    digits of ``machine_id_file`` (/etc/machine-id); ``{{`` and ``}}`` are literal braces.
    Raises ``ValueError`` with a one-line reason for any other placeholder, for a format
    specification, or when the machine id is missing or empty (an image not yet booted).
    """
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc} (write a literal brace as {{{{ or }}}})") from None
    values: dict[str, str] = {}
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in KEY_PREFIX_PLACEHOLDERS or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"unknown placeholder {shown}; key_prefix knows {{hostname}} and {{machine_id}}")
        if name == "hostname":
            values[name] = socket.gethostname()
        elif name not in values:
            values[name] = _machine_id(machine_id_file)
    return template.format(**values)


def _machine_id(path: Path) -> str:
    try:
        value = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"{{machine_id}} needs {path}, which cannot be read ({reason}); "
                         "create it with systemd-machine-id-setup, or use {hostname}") from None
    if len(value) != 32 or not all(c in "0123456789abcdef" for c in value):
        state = "empty" if not value else f"not a machine id ({value[:40]!r})"
        raise ValueError(f"{{machine_id}} needs {path}, which is {state} (an image not booted yet?); "
                         "run systemd-machine-id-setup, or use {hostname}")
    return value
