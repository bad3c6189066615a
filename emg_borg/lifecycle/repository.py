"""The repository a restore-side command reads, the tool that reads it, and what its processes need.

borg: `--repository REPO`, else the first repository of `--borgmatic-config FILE`, else `$BORG_REPO`.
With a borgmatic configuration, `--repository` may name one of its repositories by label or path,
and borg gets what borgmatic would give it: the passphrase settings, `ssh_command` (BORG_RSH),
`remote_path` (BORG_REMOTE_PATH), the key, base, config, cache and security directories, and the
archive names it makes (`match_archives`, else `archive_name_format`) as `--glob-archives`.
Everything travels in the environment of the borg processes, never in argv.

restic (`[backup] tool = "restic"`, or no borg repository named while `RESTIC_REPOSITORY` is set):
`--repository REPO`, else `$RESTIC_REPOSITORY` (or `$RESTIC_REPOSITORY_FILE`), with the password
as restic users give it (`RESTIC_PASSWORD_FILE`, `RESTIC_PASSWORD_COMMAND`, `RESTIC_PASSWORD`),
all passed to restic in its environment.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from pathlib import Path

from emg_borg.core.backup_tool import Repository
from emg_borg.errors import UsageError

logger = logging.getLogger(__name__)


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


RESTIC_PASSWORD = ("RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND", "RESTIC_PASSWORD")


def restic_location() -> str | None:
    """RESTIC_REPOSITORY, else the content of RESTIC_REPOSITORY_FILE; None when neither is set."""
    if os.environ.get("RESTIC_REPOSITORY"):
        return os.environ["RESTIC_REPOSITORY"]
    path = os.environ.get("RESTIC_REPOSITORY_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as error:
        raise UsageError(f"RESTIC_REPOSITORY_FILE {path}: {error.strerror}")


def restic_repository(repository: str | None = None) -> Repository:
    """A restic repository: `repository`, else RESTIC_REPOSITORY (or RESTIC_REPOSITORY_FILE); the
    location and the password settings reach restic in its environment only."""
    location = repository or restic_location()
    if not location:
        raise UsageError("no restic repository: pass --repository REPO or set RESTIC_REPOSITORY")
    if not any(os.environ.get(name) for name in RESTIC_PASSWORD):
        raise UsageError("no restic password: set RESTIC_PASSWORD_FILE or RESTIC_PASSWORD_COMMAND (or "
                         "RESTIC_PASSWORD) as for restic itself")
    found = Repository(location, tool="restic")
    env = {k: v for k, v in os.environ.items() if k != "RESTIC_REPOSITORY_FILE"}
    env["RESTIC_REPOSITORY"] = found.location
    return Repository(found.location, env, None, "restic")


def resolve_repository(repository: str | None = None, borgmatic_config: str | None = None,
                       tool: str | None = None) -> Repository:
    """`repository` (with `borgmatic_config`: one of its repositories, by label or path, with its
    settings), else the first repository of `borgmatic_config`, else `$BORG_REPO`; read by borg.
    With `tool` "restic", or when nothing names a borg repository and `$RESTIC_REPOSITORY` is set,
    a restic repository (`restic_repository`)."""
    if borgmatic_config:
        if tool == "restic":
            raise UsageError('--borgmatic-config names borg repositories, but [backup] tool = "restic": name the '
                             'restic repository with --repository or RESTIC_REPOSITORY')
        return borgmatic_repository(borgmatic_config, repository)
    # Without a configuration (a rebuilt machine) RESTIC_REPOSITORY alone means restic; with one,
    # only its `[backup] tool` does.
    if tool == "restic" or (tool is None and not repository and not os.environ.get("BORG_REPO") and restic_location()):
        return restic_repository(repository)
    if repository:
        return Repository(repository)
    if os.environ.get("BORG_REPO"):
        return Repository(os.environ["BORG_REPO"])
    raise UsageError("no repository: pass --repository REPO or --borgmatic-config FILE, or set BORG_REPO "
                     "(or RESTIC_REPOSITORY)")
