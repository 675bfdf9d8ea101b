"""Build step: ship the systemd unit, the sysusers.d file and the example configuration inside
the package. Their single source stays in the repository (systemd/, config.example.toml); the
wheel gets copies in syncd/install/data/ (syncd/install/shipped.py reads them). Everything else
is declared in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# path in the repository -> name in syncd/install/data/ (the same mapping as syncd/install/shipped.py)
SHIPPED = {
    "systemd/syncd.service": "syncd.service",
    "systemd/syncd.sysusers": "syncd.sysusers",
    "config.example.toml": "config.example.toml",
}


class BuildPyWithShippedFiles(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository files themselves
        data = Path(self.build_lib, "syncd", "install", "data")
        self.mkpath(str(data))
        for source, name in SHIPPED.items():
            self.copy_file(source, str(data / name))

    def get_outputs(self, include_bytecode=True):
        data = Path(self.build_lib, "syncd", "install", "data")
        return super().get_outputs(include_bytecode) + [str(data / name) for name in SHIPPED.values()]


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
