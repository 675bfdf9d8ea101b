"""The files shipped inside the package: the systemd unit, the sysusers.d file and the example
configuration.

Their single source is the repository (``systemd/`` and ``config.example.toml``); the build
(setup.py) copies them into ``syncd/install/data/`` of the wheel. A source checkout or an
editable install has no copies, so the repository files are read directly.
"""

from __future__ import annotations

from pathlib import Path

from syncd.errors import LocalError

# name in the package -> path in the repository (setup.py copies the same mapping)
SOURCES = {
    "syncd.service": "systemd/syncd.service",
    "syncd.sysusers": "systemd/syncd.sysusers",
    "config.example.toml": "config.example.toml",
}

PACKAGED = Path(__file__).resolve().parent / "data"
CHECKOUT = Path(__file__).resolve().parent.parent.parent


def shipped_path(name: str) -> Path:
    """Where the shipped file ``name`` (a key of SOURCES) is: in the package, else in the checkout."""
    for candidate in (PACKAGED / name, CHECKOUT / SOURCES[name]):
        if candidate.is_file():
            return candidate
    raise LocalError(f"{name} is missing from this installation of syncd (looked in {PACKAGED}); reinstall syncd")


def shipped_text(name: str) -> str:
    """The text of the shipped file ``name`` (a key of SOURCES)."""
    return shipped_path(name).read_text(encoding="utf-8")
