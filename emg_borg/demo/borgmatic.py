"""borgmatic-example.yaml made runnable: the same file with a demo's or a test's paths."""

from __future__ import annotations

from pathlib import Path

# A symlink to the repository's top-level file, installed as package data.
EXAMPLE = Path(__file__).with_name("borgmatic-example.yaml")


def example_config(runtime_dir: Path, config_path: Path, repository: Path, passphrase: str) -> str:
    """The example with its paths replaced and the passphrase inline; nothing else changed."""
    text = EXAMPLE.read_text()
    text = text.replace("/var/lib/emg-borg/patterns", str(Path(runtime_dir) / "patterns"))
    text = text.replace("/etc/emg-borg/config.toml", str(config_path))
    text = text.replace("/var/backups/emg.borg", str(repository))
    return text.replace("encryption_passcommand: cat /etc/emg-borg/borg-passphrase", f"encryption_passphrase: {passphrase}")
