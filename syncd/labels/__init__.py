"""Labels: what a sidecar and a mask say about an image, validated, in syncd's own schema.

``model``      the label schema (pydantic models) and its error messages
``redbrick``   RedBrick's label objects in a sidecar -> syncd's labels
``validate``   a sidecar's labels checked against the image (either form); the read hooks
``sidecar``    the sidecar file ``<stem>.json``: parsing, canonical form, JSON Schema
``classmap``   ``class_map.json`` (and the reserved file names of the convention)
``masks``      segmentation masks read through a class map, and their converters
``regions``    connected regions of a mask as boxes
``support``    what a platform can represent of labels, and what an item would lose there
"""
