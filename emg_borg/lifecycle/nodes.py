"""Which node's archives `latest` and `--at` choose among.

Several EMG nodes may back up into one repository; each manifest names its node: `hostname` and
`node_id` (server.cfg's NODEID). By default a restore-side command chooses among this node's
archives: this machine's hostname and, when the local emg-borg configuration's server.cfg is
readable and sets NODEID, that NODEID. `--host NAME` and `--node N` choose another node (node 2
rebuilt on new hardware), `--any-node` chooses among all. When none of the archives is this
node's and they all come from one node (a new machine, renamed), that node's are used, with a
warning; when they come from several, the command stops with one line naming them.

Two EMG installations on one machine (a test and a production EMGDIR, no NODEID) are one node:
by default only this installation's archives count (the manifest's `server_cfg` is the local
configuration's). When none is, and the node's archives are all of one other installation (EMGDIR
moved), those are used with a warning; of several, the command stops naming them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os

from emg_borg.core.host import machine_identity
from emg_borg.errors import EmgBorgError, UsageError
from emg_borg.lifecycle import session
from emg_borg.lifecycle.catalog import Archive, Catalog

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Node:
    hostname: str | None
    node_id: int | None

    @classmethod
    def of(cls, manifest) -> Node:
        return cls(manifest.get("hostname"), manifest.get("node_id"))

    def __str__(self) -> str:
        return (self.hostname or "?") + (f" NODEID {self.node_id}" if self.node_id is not None else "")

    @property
    def label(self) -> str:
        """The `node` column of `emg-borg archives`: host, and /NODEID when set."""
        return (self.hostname or "?") + (f"/{self.node_id}" if self.node_id is not None else "")


@dataclasses.dataclass(frozen=True)
class NodeChoice:
    host: str | None = None  # --host
    node: int | None = None  # --node
    any_node: bool = False  # --any-node
    local: Node | None = None  # this machine, the default
    server_cfg: str | None = None  # this installation's server.cfg (with `local`), when known

    @property
    def explicit(self) -> bool:
        return self.host is not None or self.node is not None

    def matches(self, manifest) -> bool:
        node = Node.of(manifest)
        if self.any_node:
            return True
        if self.explicit:
            return (self.host is None or node.hostname == self.host) and (self.node is None or node.node_id == self.node)
        if self.local is None:
            return True
        archived = manifest.get("server_cfg")
        return self.of_this_node(manifest) and (self.server_cfg is None or archived is None
                                                or archived == self.server_cfg)

    def of_this_node(self, manifest) -> bool:
        """Whether the archive is of this machine's node, whichever installation made it."""
        node = Node.of(manifest)
        return node.hostname == self.local.hostname and self.local.node_id in (None, node.node_id)

    def describe(self) -> str:
        if self.explicit:
            return " ".join(([f"--host {self.host}"] if self.host is not None else [])
                            + ([f"--node {self.node}"] if self.node is not None else []))
        return f"this node ({self.local})"


def node_choice(host: str | None, node: int | None, any_node: bool, config_path, manager) -> NodeChoice:
    """The node choice of the command line; this machine's node only when no other is named."""
    if any_node and (host is not None or node is not None):
        raise UsageError("--any-node chooses among every node's archives: leave out --host and --node")
    if any_node or host is not None or node is not None:
        return NodeChoice(host, node, any_node)
    local, server_cfg = local_node(config_path, manager)
    return NodeChoice(local=local, server_cfg=server_cfg)


def local_node(config_path, manager) -> tuple[Node, str | None]:
    """This machine's node: its hostname, and the NODEID of the server.cfg its emg-borg
    configuration (or the defaults, without one) names, when that can be read; and that
    server.cfg's path (None when it cannot be read)."""
    node_id, server_cfg = None, None
    try:
        config = (session.load_config(config_path, manager) if os.path.exists(config_path)
                  else session.default_config(manager))
        layout = manager.hook.emg_borg_discover_layout(config=config)
        node_id, server_cfg = layout.node_id, str(layout.server_cfg)
    except (EmgBorgError, OSError) as error:
        logger.debug("this machine's NODEID is unknown: %s", error)
    return Node(machine_identity()["hostname"], node_id), server_cfg


def choose(catalog: Catalog, entries, choice: NodeChoice) -> Archive | None:
    """The newest emg-borg archive among `entries` (newest first) of the chosen node; None when
    there is no emg-borg archive among them at all."""
    entries = list(entries)
    newer = None  # the newest archive of this node that another installation made, if newer
    for archive in catalog.walk(entries):
        if choice.matches(archive.manifest):
            if newer is not None and not os.path.exists(newer.manifest.get("server_cfg")):
                # Not an installation of this machine: EMGDIR moved, or this machine is a new one
                # whose default configuration names another server.cfg (a fresh EMG package's).
                raise UsageError(
                    f"the newest archive of {choice.describe()} in {catalog.repository}, {newer.name}, is of the EMG "
                    f"installation {newer.manifest.get('server_cfg')}, which is not on this machine; this one's "
                    f"({choice.server_cfg}) newest is {archive.name}: choose with --archive")
            return archive
        if newer is None and choice.local is not None and not choice.explicit and choice.of_this_node(archive.manifest):
            newer = archive
    if choice.any_node:
        return None
    found = catalog.archives(entries)
    if not found:
        return None
    ours = [a for a in found if choice.local is not None and choice.of_this_node(a.manifest)]
    if ours and not choice.explicit:
        installations = collections.Counter(a.manifest.get("server_cfg") for a in ours)
        if len(installations) == 1:
            logger.warning("no archive in %s is of this installation (%s); this node's are all of %s: choosing "
                           "among them", catalog.repository, choice.server_cfg, next(iter(installations)))
            return ours[0]
        shown = ", ".join(f"{cfg} ({count} archive{'s' if count > 1 else ''})" for cfg, count in installations.items())
        raise UsageError(f"{catalog.repository} holds archives of {len(installations)} EMG installations of "
                         f"{choice.describe()}, none of this one ({choice.server_cfg}): {shown}; choose one with "
                         f"--archive")
    counts = collections.Counter(Node.of(a.manifest) for a in found)
    if not choice.explicit and len(counts) == 1:
        logger.warning("no archive in %s is of %s; all are of %s: choosing among them",
                       catalog.repository, choice.describe(), next(iter(counts)))
        return found[0]
    nodes = ", ".join(f"{node} ({count} archive{'s' if count > 1 else ''})" for node, count in counts.items())
    raise UsageError(f"{catalog.repository} holds archives of {len(counts)} node{'s' if len(counts) > 1 else ''}, "
                     f"none of {choice.describe()}: {nodes}; choose one with --host NAME and/or --node N, "
                     f"or --any-node")


def listed(archives: list[Archive], choice: NodeChoice) -> list[Archive]:
    """`emg-borg archives` lists every node's archives unless --host or --node narrows it."""
    return [a for a in archives if choice.matches(a.manifest)] if choice.explicit else archives
