"""Installing syncd as a service: the files shipped in the package, ``syncd init`` (a ready
directory with its configuration) and ``syncd systemd-unit`` (the unit for this installation)."""
