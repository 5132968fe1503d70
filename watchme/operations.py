"""Small operations of our own, where no stock pyinfra operation fits.

Each reads a fact and either yields the commands that bring the host to the wanted state
or calls host.noop() to say why nothing needs doing. tests/test_operations.py feeds them
facts and checks what comes out, the way pyinfra tests its own operations.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import operation

from watchme.facts import HostProfile


@operation()
def swapfile(path: str, size_mib: int):
    """A swap file of size_mib, active now and after a reboot, unless swap is already on.

    Containers share the kernel's swap and may not call swapon(2), so there the operation
    only reports the skip (the deploy goes on).
    """
    profile = host.get_fact(HostProfile, swap_file=path, _sudo=False)
    if profile["container"]:
        msg = f"swap: skipped, a {profile['virt']} container cannot enable swap"
        logger.warning(f"{host.print_prefix}{msg}")  # shown without -v, unlike noop
        host.noop(msg)
        return
    if profile["swaps"]:
        host.noop(f"swap: already active ({', '.join(profile['swaps'])} KiB)")
        return
    if profile["swap_file_bytes"] != size_mib * 1024 * 1024:
        yield f"rm -f {path}"
        # fallocate is instant on ext4/xfs; dd is the fallback swapon(8) documents.
        yield (f"fallocate -l {size_mib}M {path} || "
               f"dd if=/dev/zero of={path} bs=1M count={size_mib} status=none")
        yield f"chmod 600 {path}"
        yield f"mkswap {path}"
    yield f"swapon {path}"
    line = f"{path} none swap sw 0 0"
    yield f"grep -qxF '{line}' /etc/fstab || echo '{line}' >> /etc/fstab"
