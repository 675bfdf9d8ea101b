"""syncd: watch drop folders and deliver every item exactly once to an ML data platform."""

__version__ = "0.1.0"
