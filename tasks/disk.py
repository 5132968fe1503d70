"""Docker's disk (seed: "no space left on device"): prune only when the filesystem holding
Docker's data root is at least disk_prune_threshold % full, never volumes unless asked.

The same rule runs every guard_interval on the host (disk_guard.py, from watchme-guard.timer);
this is the deploy's own pass, so a deploy that is about to need space for new images gets it
first.
"""

from __future__ import annotations

from pyinfra import host

from tasks.guard import check_data, paths
from watchme.disk import docker_prune


def apply() -> None:
    check_data()
    d = host.data
    scripts, conf = paths()
    docker_prune(
        name=f"Docker disk guard (prune at {d.disk_prune_threshold}% used"
             + (", all unused images" if d.prune_all_images else "")
             + (", volumes too" if d.prune_volumes else "") + ")",
        script=f"{scripts}/disk_guard.py", members=f"{conf}/members.json",
        threshold=d.disk_prune_threshold, all_images=d.prune_all_images, volumes=d.prune_volumes)
