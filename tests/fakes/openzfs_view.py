#!/usr/bin/env python3
"""OpenZFS's `mount -t zfs` on top of zfs-fuse, which lacks it: fakes of `findmnt`, `mount` and
`umount` for testing emg-borg's OpenZFS path with a real pool.

- `findmnt` runs the real one and reports `fuse.zfs` file systems as `zfs` (as OpenZFS shows
  them), so emg-borg takes the OpenZFS path;
- `mount -t zfs -o ro POOL/DATASET@SNAP DIR` (nothing else is accepted) makes the snapshot
  visible at DIR through a read-only clone named `<dataset>_openzfs-view`;
- `umount DIR` destroys the clone mounted at DIR.

Every call is appended to `$FAKE_OPENZFS_LOG` as a JSON line. Real commands are looked up on
`$FAKE_REAL_PATH`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

VIEW_SUFFIX = "_openzfs-view"


def real(*argv, check=False) -> subprocess.CompletedProcess:
    """Run the real command, with the real PATH: zfs-fuse's `zfs unmount` runs `umount` itself,
    which must not be this fake again."""
    env = dict(os.environ, PATH=os.environ["FAKE_REAL_PATH"])
    command = shutil.which(argv[0], path=env["PATH"])
    return subprocess.run([command, *argv[1:]], capture_output=True, text=True, check=check, env=env)


def zfs(*args, check=True) -> subprocess.CompletedProcess:
    return real("zfs", *args, check=check)


def findmnt(argv) -> int:
    result = real("findmnt", *argv)
    sys.stdout.write(result.stdout.replace('"fstype": "fuse.zfs"', '"fstype": "zfs"').replace(" fuse.zfs ", " zfs "))
    sys.stderr.write(result.stderr)
    return result.returncode


def mount(argv) -> int:
    if len(argv) != 6 or argv[:4] != ["-t", "zfs", "-o", "ro"] or "@" not in argv[4]:
        print(f"mount (fake OpenZFS): unexpected arguments {argv}", file=sys.stderr)
        return 2
    snapshot, target = argv[4], argv[5]
    if not os.path.isdir(target):
        print(f"mount: {target}: mount point does not exist.", file=sys.stderr)
        return 32
    view = snapshot.split("@")[0] + VIEW_SUFFIX
    result = zfs("clone", "-o", f"mountpoint={target}", "-o", "readonly=on", snapshot, view, check=False)
    if result.returncode != 0:
        print(f"mount: {target}: {result.stderr.strip()}", file=sys.stderr)
        return 32
    return 0


def umount(argv) -> int:
    if len(argv) != 1:
        print(f"umount (fake OpenZFS): unexpected arguments {argv}", file=sys.stderr)
        return 2
    target = argv[0]
    listing = zfs("list", "-H", "-t", "filesystem", "-o", "name,mountpoint").stdout
    views = [line.split("\t")[0] for line in listing.splitlines()
             if line.split("\t")[0].endswith(VIEW_SUFFIX) and line.split("\t")[1] == target]
    if not views:
        print(f"umount: {target}: not mounted.", file=sys.stderr)
        return 32
    zfs("unmount", views[0], check=False)
    for _ in range(50):  # zfs-fuse: "dataset is busy" for a moment after the unmount
        if zfs("destroy", views[0], check=False).returncode == 0:
            return 0
        time.sleep(0.1)
    print(f"umount: {target}: target is busy.", file=sys.stderr)
    return 32


def main(argv) -> int:
    with open(os.environ["FAKE_OPENZFS_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    return {"findmnt": findmnt, "mount": mount, "umount": umount}[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
