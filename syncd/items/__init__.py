"""Items: the drop-folder convention and what an item holds.

``convention``       which files form an item, its key, grouping, probing, walking a folder
``content``          stat signature, reading, decoding and hashing (the version), the Upload
``redbrick_export``  a RedBrick export folder (class map + datapoint map) read as items
"""
