"""The Edge Impulse targets: ``target`` (EdgeImpulseTarget, samples of a project), ``org``
(EdgeImpulseOrgTarget, data items of an organization dataset), ``client`` (the key and the
reply classification both share), ``payload`` (names, metadata markers, images, boxes).
See docs/platforms/edgeimpulse.md."""
