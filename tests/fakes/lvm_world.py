#!/usr/bin/env python3
"""Fakes of `lvcreate`, `lvs`, `lvremove`, `findmnt`, `mount` and `umount` sharing one JSON state
file (`$FAKE_LVM_STATE`): which logical volumes exist, which are mounted where, and each
snapshot's lv_attr and data_percent. Called as `lvm_world.py COMMAND ARGS...` by the small
wrappers the test fixture puts first on PATH.

Each fake accepts only the exact argv emg-borg is meant to give it and exits non-zero with a
message otherwise, and appends every call to the state's `calls`. A snapshot's content is a copy
of its origin's mounted directory taken at `lvcreate` (other volumes mounted below it left out,
as in a real snapshot); `mount` copies that content into the mount point, `umount` empties it
again, so borg really reads the frozen files.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
from pathlib import Path

LVS_FIELDS = "lv_name,vg_name,lv_path,lv_dm_path,lv_attr,origin,data_percent"
FINDMNT_FIELDS = "TARGET,SOURCE,FSTYPE,OPTIONS"


class Refused(Exception):
    def __init__(self, message: str, code: int = 3):
        super().__init__(message)
        self.code = code


def inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def lv_named(state, full_name):
    vg, _, name = full_name.partition("/")
    return next((lv for lv in state["lvs"] if lv["vg"] == vg and lv["name"] == name), None)


def lv_by_device(state, device):
    return next((lv for lv in state["lvs"] if device in (f"/dev/{lv['vg']}/{lv['name']}", dm_path(lv))), None)


def dm_path(lv) -> str:
    return f"/dev/mapper/{lv['vg'].replace('-', '--')}-{lv['name'].replace('-', '--')}"


def mount_holding(state, path):
    candidates = [m for m in state["mounts"] if inside(path, m["target"])]
    return max(candidates, key=lambda m: len(m["target"]), default=None)


def lvs(state, argv):
    if argv[:4] != ["--reportformat", "json", "--options", LVS_FIELDS] or len(argv) > 5:
        raise Refused(f"lvs: unexpected arguments {argv}")
    selected = state["lvs"]
    if len(argv) == 5:
        selected = [lv for lv in selected if lv == lv_named(state, argv[4])]
    report = [{
        "lv_name": lv["name"], "vg_name": lv["vg"], "lv_path": f"/dev/{lv['vg']}/{lv['name']}",
        "lv_dm_path": dm_path(lv), "lv_attr": lv["attr"], "origin": lv.get("origin", ""),
        "data_percent": lv.get("data_percent", ""),
    } for lv in selected]
    print(json.dumps({"report": [{"lv": report}]}, indent=2))
    if len(argv) == 5 and not selected:
        print(f'  Failed to find logical volume "{argv[4]}"', file=sys.stderr)
        return 5
    return 0


def lvcreate(state, argv):
    if (len(argv) != 8 or argv[:3] != ["--snapshot", "--permission", "rw"] or argv[3] not in ("--extents", "--size")
            or argv[5] != "--name"):
        raise Refused(f"lvcreate: unexpected arguments {argv}")
    size_option, size, name, origin_name = argv[3], argv[4], argv[6], argv[7]
    if ("%" in size) != (size_option == "--extents"):
        raise Refused(f"lvcreate: {size_option} {size}: percentages go with --extents, sizes with --size")
    if not re.fullmatch(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}", name) or name.startswith(("snapshot", "pvmove")):
        raise Refused(f'  Logical volume name "{name}" is invalid.', 3)
    origin = lv_named(state, origin_name)
    if origin is None:
        raise Refused(f'  Failed to find logical volume "{origin_name}"', 5)
    if lv_named(state, f"{origin['vg']}/{name}") is not None:
        raise Refused(f'  Logical Volume "{name}" already exists in volume group "{origin["vg"]}"', 5)
    live = next((m["target"] for m in state["mounts"] if m["source"] == dm_path(origin)), None)
    content = Path(state["dir"]) / "snapshots" / origin["vg"] / name
    if content.exists():
        shutil.rmtree(content)
    if live is None:
        content.mkdir(parents=True)
    else:
        # Other volumes mounted below the origin are not part of its snapshot: empty directories.
        nested = {m["target"] for m in state["mounts"] if m["target"] != live and inside(m["target"], live)}

        def ignore(directory, names):
            return [n for n in names if os.path.join(directory, n) in nested]

        shutil.copytree(live, content, symlinks=True, ignore=ignore)
        for target in nested:
            (content / os.path.relpath(target, live)).mkdir(parents=True, exist_ok=True)
    state["lvs"].append({
        "vg": origin["vg"], "name": name, "attr": "swi-a-s---", "origin": origin["name"], "data_percent": "0.01",
        "fstype": origin["fstype"], "content": str(content),
    })
    print(f'  Logical volume "{name}" created.')
    return 0


def lvremove(state, argv):
    if len(argv) != 2 or argv[0] != "--force":
        raise Refused(f"lvremove: unexpected arguments {argv}")
    lv = lv_named(state, argv[1])
    if lv is None:
        raise Refused(f'  Failed to find logical volume "{argv[1]}"', 5)
    if any(m["source"] == dm_path(lv) for m in state["mounts"]):
        raise Refused(f"  Logical volume {argv[1]} contains a filesystem in use.", 5)
    if lv.get("content"):
        shutil.rmtree(lv["content"], ignore_errors=True)
    state["lvs"].remove(lv)
    print(f'  Logical volume "{lv["name"]}" successfully removed.')
    return 0


def mount(state, argv):
    if len(argv) != 4 or argv[0] != "-o":
        raise Refused(f"mount: unexpected arguments {argv}")
    options, source, target = argv[1].split(","), argv[2], argv[3]
    lv = lv_by_device(state, source)
    if lv is None or not lv.get("content"):
        raise Refused(f"mount: {target}: special device {source} does not exist.", 32)
    if "ro" not in options or set(options) - {"ro", "nouuid"}:
        raise Refused(f"mount: unexpected options {argv[1]}", 32)
    if lv["fstype"] == "xfs" and "nouuid" not in options:
        print(f"mount: {target}: wrong fs type, bad option, bad superblock on {source}.", file=sys.stderr)
        print("XFS: Filesystem has duplicate UUID - can't mount", file=sys.stderr)
        return 32
    if not os.path.isdir(target) or os.listdir(target):
        raise Refused(f"mount: {target}: mount point does not exist or is not empty (test setup).", 32)
    if any(m["target"] == target for m in state["mounts"]):
        raise Refused(f"mount: {target}: already mounted.", 32)
    shutil.copytree(lv["content"], target, symlinks=True, dirs_exist_ok=True)
    state["mounts"].append({"target": target, "source": dm_path(lv), "fstype": lv["fstype"], "options": argv[1]})
    return 0


def umount(state, argv):
    if len(argv) != 1:
        raise Refused(f"umount: unexpected arguments {argv}")
    target = argv[0].rstrip("/")
    mounted = next((m for m in state["mounts"] if m["target"] == target), None)
    if mounted is None:
        raise Refused(f"umount: {target}: not mounted.", 32)
    for child in Path(target).iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    state["mounts"].remove(mounted)
    return 0


def findmnt(state, argv):
    rows = state["mounts"]
    if argv[:3] == ["--json", "--output", FINDMNT_FIELDS] and len(argv) == 5 and argv[3] == "--target":
        found = mount_holding(state, os.path.abspath(argv[4]))
        rows = [found] if found else []
    elif argv == ["--json", "--list", "--output", FINDMNT_FIELDS]:
        pass
    elif argv == ["--list", "--noheadings", "--output", "TARGET"]:
        print("\n".join(m["target"] for m in rows))
        return 0
    else:
        raise Refused(f"findmnt: unexpected arguments {argv}")
    if not rows:
        return 1
    keys = ("target", "source", "fstype", "options")
    print(json.dumps({"filesystems": [{k: m[k] for k in keys} for m in rows]}, indent=3))
    return 0


def fill(state, argv):
    """Not a fake of a command: the test's way to make a snapshot overflow, as emgd writing more
    than the snapshot's copy-on-write space holds would (LVM then marks it invalid)."""
    lv = lv_named(state, argv[0])
    if lv is None:
        raise Refused(f"fill: no logical volume {argv[0]}")
    lv["attr"], lv["data_percent"] = "swi-I-s---", "100.00"
    return 0


COMMANDS = {f.__name__: f for f in (lvs, lvcreate, lvremove, mount, umount, findmnt, fill)}


def main(argv) -> int:
    command, args = argv[0], argv[1:]
    state_path = Path(os.environ["FAKE_LVM_STATE"])
    with open(state_path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(state_path.read_text())
        state["calls"].append([command, *args])
        try:
            # A test's injected failure: {"fail": {command: {"message": ..., "code": ..., "times": n}}}
            failure = state.get("fail", {}).get(command)
            if failure and failure.get("times", 1) > 0:
                failure["times"] = failure.get("times", 1) - 1
                raise Refused(failure["message"], failure.get("code", 5))
            code = COMMANDS[command](state, args)
        except Refused as refusal:
            print(str(refusal), file=sys.stderr)
            code = refusal.code
        state_path.write_text(json.dumps(state, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
