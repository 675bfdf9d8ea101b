"""The Dataloop target: ``target`` (DataloopTarget), ``client`` (the key and the dataset),
``wire`` (item JSON: the marker, metadata diffs), ``annotations`` (labels and masks written
as annotations). See docs/platforms/dataloop.md."""
