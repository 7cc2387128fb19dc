"""Configuration: loading, validation against the schema, per-variant resolution, `--config` typing and the HPO search space."""
