"""Discovering where an EMG installation keeps its files, and which category each belongs to.

The vendor note divides EMG's files into executables, configuration, logs and data (the spool).
Discovery starts from server.cfg: EMGDIR is configuration as a whole; SPOOLDIR (from server.cfg)
is data; the log directory (EMGDIR/log, `EMGLOGDIR`, a symlink followed) is logs; EMGDIR/bin is
executables; and every file server.cfg references outside EMGDIR becomes a root of its own.
A path belongs to the category of the longest root that contains it, so the spool inside EMGDIR
(`/etc/emg/spool`, the vendor default) is data, not configuration.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from pathlib import Path

from emg_borg.emg import servercfg
from emg_borg.emg.categories import innermost_category, within
from emg_borg.errors import ConfigError, quoted, shortened

logger = logging.getLogger(__name__)

# server.cfg keywords whose values name files. Values of other keywords that are absolute paths
# to existing files are picked up too, so unknown plugin options are not missed.
FILE_KEYWORDS = {
    "ROUTING": "config", "USERS": "config", "BLACKLIST": "config", "WHITELIST": "config",
    "CONFIG": "config", "KEYWORDS": "config", "MAPPING": "config", "SSLCERT": "config",
    "SSLKEY": "config", "SSLCA": "config", "CERTFILE": "config", "KEYFILE": "config",
    "LIBRARY": "executables",
}
# Keywords naming directories handled on their own, never treated as referenced files.
DIRECTORY_KEYWORDS = {"SPOOLDIR", "LOGDIR", "EMGLOGDIR"}
KNOWN_CONFIG_FILES = ("server.cfg", "client.cfg", "license", "users", "routing")
# Linux's limits.h: a path of PATH_MAX bytes or more (its NUL counts), or a name of more than
# NAME_MAX bytes, fails every system call with ENAMETOOLONG.
PATH_MAX, NAME_MAX = 4096, 255
# `emg-borg restore` moves an existing spool aside under a name with this mark; backups skip it.
MOVED_ASIDE_MARK = ".emg-borg-before-restore-"


@dataclasses.dataclass(frozen=True)
class Root:
    category: str
    path: Path
    why: str = ""


@dataclasses.dataclass(frozen=True)
class Reference:
    """A file named by server.cfg."""

    keyword: str
    value: str
    path: Path
    line: int
    block: str  # "" for the general section, else "KIND label"
    category: str
    exists: bool


@dataclasses.dataclass(frozen=True)
class DbProfile:
    label: str
    type: str
    host: str | None
    port: int | None
    user: str | None
    password: str | None = dataclasses.field(repr=False)
    database: str | None
    line: int

    @property
    def is_mysql(self) -> bool:
        return self.type.upper() in ("MYSQL", "MARIADB", "")


@dataclasses.dataclass
class Layout:
    emgdir: Path
    server_cfg: Path
    spooldir: Path
    logdir: Path | None
    bindir: Path | None
    roots: list[Root]
    references: list[Reference]
    known_files: dict[str, Path]
    db: DbProfile | None
    node_id: int | None

    def to_dict(self) -> dict:
        return {
            "emgdir": str(self.emgdir),
            "server_cfg": str(self.server_cfg),
            "spooldir": str(self.spooldir),
            "logdir": str(self.logdir) if self.logdir else None,
            "bindir": str(self.bindir) if self.bindir else None,
            "roots": [{"category": r.category, "path": str(r.path), "why": r.why} for r in self.roots],
            "references": [
                {
                    "keyword": r.keyword, "value": r.value, "path": str(r.path), "line": r.line,
                    "block": r.block, "category": r.category, "exists": r.exists,
                }
                for r in self.references
            ],
            "known_files": {k: str(v) for k, v in self.known_files.items()},
            "database": (
                {
                    "profile": self.db.label, "type": self.db.type, "host": self.db.host,
                    "port": self.db.port, "user": self.db.user, "database": self.db.database,
                }
                if self.db else None
            ),
            "node_id": self.node_id,
        }


def category_of(path: Path, roots) -> str | None:
    """The category of the longest root containing `path` (None when no root does)."""
    return innermost_category(path, ((root.category, root.path) for root in roots))


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _resolve(value: str, emgdir: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return Path(os.path.normpath(path if path.is_absolute() else emgdir / path))


def discover(emg: dict, environ=os.environ) -> Layout:
    """Discover the layout from the `[emg]` configuration section."""
    emgdir = Path(os.path.normpath(emg["emgdir"]))
    if not emgdir.is_dir():
        raise ConfigError(f"EMGDIR {emgdir} is not a directory (set [emg] emgdir)")
    cfg_path = _resolve(emg["server_cfg"], emgdir) if emg.get("server_cfg") else emgdir / "server.cfg"
    cfg = servercfg.read(cfg_path)

    spool_entry = cfg.entry("SPOOLDIR")
    if emg.get("spooldir"):
        spooldir, spool_why = _resolve(emg["spooldir"], emgdir), "[emg] spooldir"
    elif spool_entry and spool_entry.value:
        spooldir, spool_why = _path_of(spool_entry, emgdir, cfg_path), f"SPOOLDIR on line {spool_entry.line}"
    else:
        spooldir, spool_why = emgdir / "spool", "default EMGDIR/spool"

    if _real(spooldir) == Path("/") or within(_real(emgdir), _real(spooldir)):
        where = spool_entry.line if spool_why.startswith("SPOOLDIR") else None
        raise ConfigError(f"SPOOLDIR {shortened(str(spooldir))} resolves to {shortened(str(_real(spooldir)))}, which "
                          f"holds EMGDIR or is /: refusing to treat it as the spool",
                          cfg_path if where else None, where)
    logdir, log_why = _find_logdir(emg, emgdir, environ)
    bindir = None
    if emg.get("bindir"):
        bindir = _resolve(emg["bindir"], emgdir)
    elif (emgdir / "bin").is_dir():
        bindir = emgdir / "bin"

    # Roots are real paths: borg archives a symlink as a link and does not follow it. A symlink
    # the configuration goes through (EMGDIR -> /home/emg/etc, SPOOLDIR -> /data/spool) is kept
    # as a config root of its own when no other root holds it, so a restore recreates it.
    roots: list[Root] = []
    links: list[tuple[Path, str]] = []

    def add(category: str, path: Path, why: str) -> None:
        real = _real(path)
        if real != path:
            links.append((path, f"symlink to {real}"))
            why = f"{why}, through {path}"
        roots.append(Root(category, real, why))

    add("config", emgdir, "EMGDIR")
    if not within(_real(cfg_path), _real(emgdir)):
        add("config", cfg_path, "server.cfg outside EMGDIR")
    add("data", spooldir, spool_why)
    if logdir is not None:
        add("logs", logdir, log_why)
    if bindir is not None:
        add("executables", bindir, "EMG executables")

    references = list(_references(cfg, emgdir))
    for ref in references:
        real = _real(ref.path)
        if real == Path("/") or within(_real(emgdir), real):
            raise ConfigError(f"{ref.keyword}={shortened(ref.value)} resolves to {shortened(str(real))}, which holds "
                              f"EMGDIR or is /: a file server.cfg refers to cannot be that", cfg_path, ref.line)
        if not ref.exists:
            logger.warning("%s:%d: %s=%s names %s, which does not exist", cfg_path, ref.line, ref.keyword,
                           shortened(ref.value), shortened(str(ref.path)))
            continue
        # A referenced file gets a root of its own wherever the enclosing root is of another
        # category (a plugin's CONFIG=bin/plugin.cfg is configuration, not an executable).
        if category_of(_real(ref.path), roots) != ref.category:
            where = f"{ref.keyword} on line {ref.line}" + (f" in {ref.block}" if ref.block else "")
            add(ref.category, ref.path, where)
    for link, why in links:
        if not any(within(link.parent, root.path) for root in roots):
            roots.append(Root("config", link, why))
    emgdir, cfg_path, spooldir = _real(emgdir), _real(cfg_path), _real(spooldir)
    logdir = _real(logdir) if logdir is not None else None
    bindir = _real(bindir) if bindir is not None else None

    known = {name: emgdir / name for name in KNOWN_CONFIG_FILES if (emgdir / name).exists()}
    node_entry = cfg.entry("NODEID")
    node_id = None
    if node_entry is not None:
        try:
            node_id = int(node_entry.value or "")
        except ValueError:
            raise ConfigError(f"NODEID must be an integer, got {quoted(node_entry.value)}", cfg_path, node_entry.line)
    return Layout(
        emgdir=emgdir, server_cfg=cfg_path, spooldir=spooldir, logdir=logdir, bindir=bindir,
        roots=roots, references=references, known_files=known, db=db_profile(cfg), node_id=node_id,
    )


def _find_logdir(emg: dict, emgdir: Path, environ) -> tuple[Path | None, str]:
    if emg.get("logdir"):
        candidate, why = _resolve(emg["logdir"], emgdir), "[emg] logdir"
    elif environ.get("EMGLOGDIR"):
        candidate, why = _resolve(environ["EMGLOGDIR"], emgdir), "$EMGLOGDIR"
    else:
        candidate, why = emgdir / "log", "EMGDIR/log"
    if candidate.is_symlink():
        # The symlink itself stays in the config category (it is part of EMGDIR); its target
        # holds the logs.
        target = candidate.resolve()
        return target, f"{why}, a symlink to {target}"
    if candidate.is_dir():
        return candidate, why
    if emg.get("logdir") or environ.get("EMGLOGDIR"):
        logger.warning("log directory %s (%s) does not exist", candidate, why)
    return None, why


def _references(cfg: servercfg.ServerCfg, emgdir: Path):
    for block, entry in cfg.all_entries():
        if entry.value is None or entry.key in DIRECTORY_KEYWORDS or not entry.value:
            continue
        category = FILE_KEYWORDS.get(entry.key)
        value = entry.value
        if category is None:
            # Unknown keyword: only an absolute path to an existing file counts (a long text is none).
            if not value.startswith("/") or not _is_file(Path(value)):
                continue
            category = "config"
        path = _path_of(entry, emgdir, cfg.path)
        yield Reference(
            entry.key, value, path, entry.line, f"{block.kind} {block.label}".strip() if block else "", category,
            _exists(path, entry, cfg.path),
        )


def too_long(path: Path) -> str | None:
    """Why no Linux file system takes `path` (PATH_MAX, NAME_MAX), or None. Checked before any
    system call, so a 5 MB value is refused in one line naming it, not by ENAMETOOLONG."""
    encoded = os.fsencode(path)
    longest = max(encoded.split(b"/"), key=len)
    if len(encoded) >= PATH_MAX:
        return _too_long_message(path)
    if len(longest) > NAME_MAX:
        return (f"the path is too long for the file system: a name of {len(longest):,} bytes where at most "
                f"{NAME_MAX} are allowed ({quoted(os.fsdecode(longest))})")
    return None


def _too_long_message(path: Path) -> str:
    return f"the path is too long for the file system: {quoted(str(path))}"


def _path_of(entry: servercfg.Entry, emgdir: Path, cfg_path: Path) -> Path:
    """The path a server.cfg setting names; refused in one line naming its key and line when no
    file system takes it."""
    path = _resolve(entry.value, emgdir)
    problem = too_long(path)
    if problem:
        raise ConfigError(problem, cfg_path, entry.line, entry.key)
    return path


def _exists(path: Path, entry: servercfg.Entry, cfg_path: Path) -> bool:
    """Path.exists; a file system with lower limits than Linux's (NAME_MAX 143 on eCryptfs)
    refuses a path only here, and then in the same line as `too_long`."""
    try:
        return path.exists()
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
        raise ConfigError(_too_long_message(path), cfg_path, entry.line, entry.key) from None


def _is_file(path: Path) -> bool:
    """Path.is_file for any text (an unknown keyword's value): a name too long for the file
    system names no file."""
    try:
        return not too_long(path) and path.is_file()
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
        return False


def db_profile(cfg: servercfg.ServerCfg) -> DbProfile | None:
    """The DB block named by DBPROFILE, or None when server.cfg names none."""
    entry = cfg.entry("DBPROFILE")
    if entry is None:
        return None
    if not entry.value:
        raise ConfigError("DBPROFILE needs a value naming a DB block", cfg.path, entry.line)
    block = cfg.block("DB", entry.value)
    if block is None:
        label = shortened(entry.value)
        raise ConfigError(f"DBPROFILE={label} names no 'DB {label} <' block", cfg.path, entry.line)
    port = block.get("PORT")
    if port is not None:
        try:
            port = int(port)
        except ValueError:
            raise ConfigError(f"PORT must be a number, got {quoted(port)}", cfg.path, block.entry("PORT").line)
    return DbProfile(
        label=block.label, type=block.get("TYPE", "MYSQL") or "", host=block.get("HOST"), port=port,
        user=block.get("USERNAME"), password=block.get("PASSWORD"), database=block.get("DBNAME"),
        line=block.line,
    )
