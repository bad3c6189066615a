"""Thin wrappers around the external commands emg-borg runs: one module per tool, argv as tuples."""
