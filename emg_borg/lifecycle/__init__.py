"""The lifecycle: backup (before/after), restore, and the state a run shares between processes."""
