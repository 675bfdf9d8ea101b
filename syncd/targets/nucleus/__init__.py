"""The Scale Nucleus target: ``target`` (NucleusTarget), ``client`` (requests),
``jobs`` (async jobs), ``payload`` (pure converters), ``annotations`` (labels and masks
written as annotations). See docs/platforms/nucleus.md."""
