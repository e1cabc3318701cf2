"""Checkpoint formats: one module per format, each a name table plus its config keys."""
