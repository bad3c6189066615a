"""The borg repository a restore-side command reads, and what its borg processes need to read it.

`--repository REPO`, else the first repository of `--borgmatic-config FILE`, else `$BORG_REPO`.
With a borgmatic configuration, `--repository` may name one of its repositories by label or path,
and borg gets what borgmatic would give it: the passphrase settings, `ssh_command` (BORG_RSH),
`remote_path` (BORG_REMOTE_PATH), the key, base, config, cache and security directories, and the
archive names it makes (`match_archives`, else `archive_name_format`) as `--glob-archives`.
Everything travels in the environment of the borg processes, never in argv.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
from pathlib import Path

from emg_borg.errors import UsageError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Repository:
    """A borg repository, the environment its borg processes need (a passphrase taken from a
    borgmatic configuration travels here, never in argv), and the glob of the archive names to
    consider (borg 1.4's `--glob-archives`; None: all)."""

    location: str
    env: dict | None = dataclasses.field(default=None, repr=False)
    match_archives: str | None = None

    def __post_init__(self):
        # borg runs in the extraction directory, so a relative local path must be made absolute;
        # `ssh://...` and scp-style `host:path` locations stay as they are.
        if ":" not in self.location:
            object.__setattr__(self, "location", os.path.abspath(os.path.expanduser(self.location)))

    def __str__(self) -> str:
        return self.location


# borgmatic's option -> borg's environment variable (borgmatic/borg/environment.py), for the
# options that matter when reading a repository. A configured value wins over the environment.
ENVIRONMENT = {
    "ssh_command": "BORG_RSH",
    "remote_path": "BORG_REMOTE_PATH",
    "borg_base_directory": "BORG_BASE_DIR",
    "borg_config_directory": "BORG_CONFIG_DIR",
    "borg_cache_directory": "BORG_CACHE_DIR",
    "borg_security_directory": "BORG_SECURITY_DIR",
    "borg_keys_directory": "BORG_KEYS_DIR",
    "borg_key_file": "BORG_KEY_FILE",
    "temporary_directory": "TMPDIR",
}
FLAGS = {
    "relocated_repo_access_is_ok": "BORG_RELOCATED_REPO_ACCESS_IS_OK",
    "unknown_unencrypted_repo_access_is_ok": "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK",
}
PASSPHRASE_VARIABLES = ("BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD")
# Options of one repository entry that are not general options (borgmatic/config/load.py).
REPOSITORY_ONLY = {"path", "label", "encryption", "append_only", "storage_quota", "make_parent_directories",
                   "id_hash", "key_location", "copy_crypt_key"}
SECTIONS = ("location", "storage", "retention", "consistency", "output", "hooks")  # borgmatic 1.x
DEFAULT_NAME_FORMAT = "{hostname}-{now:%Y-%m-%dT%H:%M:%S.%f}"  # borgmatic's, for borg 1.x
CREDENTIAL_FILE = re.compile(r"^\{credential file (?P<path>.+)\}$")


def load_yaml(path: Path):
    """A YAML file (a borgmatic configuration) as Python data."""
    text = path.read_text()
    try:
        from ruamel.yaml import YAML  # borgmatic's own YAML library, present wherever it is
    except ImportError:
        import yaml  # PyYAML, when borgmatic runs from elsewhere

        return yaml.safe_load(text)
    return YAML(typ="safe", pure=True).load(text)


def read_borgmatic_config(path) -> dict:
    """A borgmatic configuration as one flat dict (borgmatic 1.x nested options in sections)."""
    path = Path(path)
    try:
        data = load_yaml(path) or {}
    except OSError as error:
        raise UsageError(f"cannot read borgmatic configuration {path}: {error.strerror}")
    except Exception as error:  # noqa: BLE001 - both YAML libraries raise their own error types
        raise UsageError(f"cannot parse borgmatic configuration {path}: {str(error).splitlines()[0]}")
    if not isinstance(data, dict):
        raise UsageError(f"borgmatic configuration {path} is not a mapping of options")
    sections = [k for k in SECTIONS if isinstance(data.get(k), dict)]
    flat = {k: v for section in sections for k, v in data[section].items()}
    flat.update({k: v for k, v in data.items() if k not in sections})
    return flat


def _entries(config: dict) -> list[dict]:
    return [entry if isinstance(entry, dict) else {"path": str(entry)} for entry in config.get("repositories") or []]


def borgmatic_repositories(path) -> list[Repository]:
    """Every repository of a borgmatic configuration, each with the settings borg needs for it."""
    config = read_borgmatic_config(path)
    entries = _entries(config)
    if not entries:
        raise UsageError(f"borgmatic configuration {path} lists no repositories")
    return [_repository(path, config, entry) for entry in entries]


def borgmatic_repository(path, wanted: str | None = None) -> Repository:
    """The repository of a borgmatic configuration labelled or located `wanted` (default: the
    first), with the configuration's settings for it."""
    config = read_borgmatic_config(path)
    entries = _entries(config)
    if not entries:
        raise UsageError(f"borgmatic configuration {path} lists no repositories")
    entry = entries[0]
    if wanted:
        known = {e.get("label"): e for e in entries if e.get("label")}
        known.update({os.path.expanduser(os.path.expandvars(e["path"])): e for e in entries})
        entry = known.get(wanted) or known.get(os.path.expanduser(wanted))
        if entry is None and "/" not in wanted and ":" not in wanted:
            labels = ", ".join(str(e["label"]) for e in entries if e.get("label")) or "none"
            raise UsageError(f"--repository {wanted}: no repository of {path} has that label (labels: {labels})")
        # A location the configuration does not list is read with its general settings.
        entry = entry or {"path": wanted}
    return _repository(path, config, entry)


def _repository(path, config: dict, entry: dict) -> Repository:
    settings = {**config, **{k: v for k, v in entry.items() if k not in REPOSITORY_ONLY}}
    location = os.path.expanduser(os.path.expandvars(str(entry["path"])))
    extra = {variable: str(settings[option]) for option, variable in ENVIRONMENT.items()
             if settings.get(option) is not None}
    extra.update({variable: "yes" if settings[option] else "no" for option, variable in FLAGS.items()
                  if settings.get(option) is not None and os.environ.get(variable) is None})
    if not any(os.environ.get(v) for v in PASSPHRASE_VARIABLES):  # the environment's passphrase wins
        extra.update(_passphrase(path, settings))
    env = {**os.environ, **extra} if extra else None
    return Repository(location, env, archive_glob(settings))


def _passphrase(path, settings: dict) -> dict:
    passphrase, passcommand = settings.get("encryption_passphrase"), settings.get("encryption_passcommand")
    if passphrase is not None:
        credential = CREDENTIAL_FILE.match(str(passphrase).strip())
        if credential:
            return {"BORG_PASSCOMMAND": f"cat {shlex.quote(credential['path'])}"}
        if str(passphrase).strip().startswith("{credential "):
            raise UsageError(f"{path}: encryption_passphrase: only {{credential file PATH}} is understood here; "
                             f"set BORG_PASSPHRASE or BORG_PASSCOMMAND for borg instead")
        return {"BORG_PASSPHRASE": os.path.expandvars(str(passphrase))}
    if passcommand is not None:
        return {"BORG_PASSCOMMAND": str(passcommand)}
    return {}


def archive_glob(settings: dict) -> str | None:
    """borg 1.4's `--glob-archives` for the archives this configuration makes: `match_archives`,
    else `archive_name_format` with its changing parts (`{now}`, `{utcnow}`, `{pid}`) as `*`, as
    borgmatic derives it. The host name parts become `*` too: which node an archive belongs to is
    read from its manifest, so that another node's archives (`--host`) and a renamed machine's
    are found. None when everything matches."""
    match = settings.get("match_archives")
    if match:
        match = str(match)
        if match.startswith("re:"):
            logger.warning("match_archives %r: borg 1.4 takes shell-style patterns only; considering every archive",
                           match)
            return None
        glob = match.removeprefix("sh:")
    else:
        glob = re.sub(r"\{(now|utcnow|pid)([:%\w.-]*)\}", "*", str(settings.get("archive_name_format")
                                                                   or DEFAULT_NAME_FORMAT))
    glob = re.sub(r"\{(hostname|fqdn|reverse-fqdn|borgversion|borgmajor|borgminor|borgpatch)\}", "*", glob)
    glob = re.sub(r"\*+", "*", glob)
    return None if glob == "*" else glob


def resolve_repository(repository: str | None = None, borgmatic_config: str | None = None) -> Repository:
    """`repository` (with `borgmatic_config`: one of its repositories, by label or path, with its
    settings), else the first repository of `borgmatic_config`, else `$BORG_REPO`."""
    if borgmatic_config:
        return borgmatic_repository(borgmatic_config, repository)
    if repository:
        return Repository(repository)
    if os.environ.get("BORG_REPO"):
        return Repository(os.environ["BORG_REPO"])
    raise UsageError("no repository: pass --repository REPO or --borgmatic-config FILE, or set BORG_REPO")
