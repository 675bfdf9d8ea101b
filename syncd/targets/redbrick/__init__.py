"""The RedBrick AI target: ``target`` (RedBrickTarget), ``client`` (GraphQL and presigned
uploads), ``annotations`` (labels and masks of a task). See docs/platforms/redbrick.md."""
