"""Two EMG nodes back up into one repository: `archives` shows whose each archive is, `latest`
chooses among this node's (hostname, and NODEID from the local server.cfg), `--host`, `--node`
and `--any-node` choose otherwise, and a choice nothing matches is one line naming the nodes.
Node 2 runs under another hostname (`unshare -u`), as on a machine of its own."""

from __future__ import annotations

import json
import shutil
import socket
import sys

import pytest

from conftest import Emg, borg_create_from, run

pytestmark = pytest.mark.e2e

NODE_CONFIG = "[seqno]\nnode_digits = 3\n"  # node n's ids: n000 ... n999


def as_host(hostname: str, *argv) -> list[str]:
    """argv run under another hostname (a UTS namespace of its own)."""
    return ["unshare", "-u", "sh", "-c", f'hostname {hostname} && exec "$0" "$@"', *map(str, argv)]


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def two_nodes(tmp_path, mariadb):
    if not shutil.which("unshare") or run(["unshare", "-u", "true"], check=False).returncode != 0:
        pytest.skip("unshare -u is not available here")
    one = Emg(tmp_path / "one", mariadb, extra_config=NODE_CONFIG)
    two = Emg(tmp_path / "two", mariadb, extra_config=NODE_CONFIG)
    for emg, node in ((one, 1), (two, 2)):
        with open(emg.tree.server_cfg, "a") as f:
            f.write(f"NODEID={node}\n")
    mariadb.sql("INSERT INTO routelog (id, connector) VALUES (2500, 'mgp-in1')", two.database)
    two.repo = one.repo
    one.borgmatic_create()
    run(as_host("node2", "borgmatic", "--config", two.borgmatic_config(), "create"))
    return one, two


def test_two_nodes_share_one_repository(two_nodes, tmp_path):
    one, two = two_nodes
    here = socket.gethostname()
    repo = ("--repository", str(one.repo))

    listed = json.loads(one.emg_borg("archives", *repo, "--json").stdout)
    assert [(a["hostname"], a["node_id"], a["message_id"]) for a in listed] == [("node2", 2, 2500), (here, 1, 1049)]
    table = one.emg_borg("archives", *repo).stdout.splitlines()
    assert table[0].split()[-2:] == ["node", "archive"]
    assert [line.split()[-2] for line in table[1:]] == ["node2/2", f"{here}/1"]
    assert [a["name"] for a in json.loads(one.emg_borg("archives", *repo, "--host", "node2", "--json").stdout)] == \
        [listed[0]["name"]]

    def chosen(emg, *args, argv=None) -> str:
        command = [sys.executable, "-m", "emg_borg", "-c", emg.config_path, "extract", *repo, "--dry-run", "--json", *args]
        return json.loads(run(argv(*command) if argv else command).stdout)["archive"]

    node1, node2 = listed[1]["name"], listed[0]["name"]
    assert chosen(one) == node1  # this node's latest, though node 2's is newer
    assert chosen(one, "--host", "node2") == node2
    assert chosen(one, "--node", "2") == node2
    assert chosen(one, "--any-node") == node2
    assert chosen(two, argv=lambda *c: as_host("node2", *c)) == node2  # node 2 on its own machine
    target = tmp_path / "target"
    target.mkdir()
    report = json.loads(one.emg_borg("restore", *repo, "--dry-run", "--json", "--target", str(target)).stdout)
    assert (report["archive"], report["seqno"]["value"]) == (node1, 1049 + 10_000_000)

    # Node 2's configuration on this machine's hostname: no archive is that node's.
    refused = two.emg_borg("restore", *repo, "--dry-run", "--target", str(target), check=False)
    assert refused.returncode == 2
    assert error_line(refused) == (
        f"emg-borg: error: {one.repo} holds archives of 2 nodes, none of this node ({here} NODEID 2): "
        f"node2 NODEID 2 (1 archive), {here} NODEID 1 (1 archive); choose one with --host NAME and/or --node N, "
        f"or --any-node")
    refused = one.emg_borg("extract", *repo, "--dry-run", "--host", here, "--node", "2", check=False)
    assert refused.returncode == 2 and f"none of --host {here} --node 2" in error_line(refused)
    # A new machine with a new name and no configuration cannot tell which node it replaces.
    missing = tmp_path / "missing.toml"
    fresh = run(as_host("node3", sys.executable, "-m", "emg_borg", "-c", missing, "extract", *repo, "--dry-run"),
                check=False)
    assert fresh.returncode == 2 and "none of this node (node3)" in error_line(fresh)
    assert list(target.iterdir()) == []


def test_a_new_machine_finds_the_only_node_s_archives(emg, tmp_path):
    """One node in the repository: a renamed new machine without configuration restores it."""
    emg.borgmatic_create()
    missing = tmp_path / "missing.toml"
    result = run(as_host("rebuilt", sys.executable, "-m", "emg_borg", "-c", missing, "extract", "--repository",
                         emg.repo, "--dry-run", "--json"))
    assert json.loads(result.stdout)["archive"]
    assert (f"no archive in {emg.repo} is of this node (rebuilt); all are of {socket.gethostname()}: choosing "
            f"among them") in result.stderr


def test_borgmatic_archive_names_limit_the_archives_considered(emg, tmp_path):
    """With --borgmatic-config only archives named as borgmatic names them (archive_name_format,
    host part aside) are considered; a copy under another name is not, with --repository it is."""
    emg.borgmatic_create()
    content = tmp_path / "copy"
    (content / "emg-borg").mkdir(parents=True)
    (content / "emg-borg" / "manifest.json").write_text(json.dumps({"format_version": 2, "message_id": 7,
                                                                    "hostname": socket.gethostname()}))
    borg_create_from(emg.repo, "manual-copy", content)
    config = emg.borgmatic_config()
    by_config = json.loads(emg.emg_borg("archives", "--borgmatic-config", str(config), "--json").stdout)
    by_repository = json.loads(emg.emg_borg("archives", "--repository", str(emg.repo), "--json").stdout)
    assert [a["message_id"] for a in by_config] == [1049]
    assert [a["message_id"] for a in by_repository] == [7, 1049]
