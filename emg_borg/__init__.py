"""emg-borg: consistent borg backups and guided restores of the EMG SMS gateway."""

__version__ = "0.1.0"
