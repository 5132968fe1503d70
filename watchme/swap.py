"""The swap file (seed: "Swap 2.0GB"): no stock pyinfra operation creates and enables one.

Reads the host profile (watchme/host_profile.py, read once per deploy) and either yields the
commands that bring the host to the wanted state or calls host.noop() to say why nothing
needs doing. tests/test_swap.py feeds it profiles and checks what comes out.
"""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import operation

from watchme import host_profile


@operation()
def swapfile(path: str, size_mib: int):
    """A swap file of size_mib, active now and after a reboot, unless swap is already on.

    An existing swap file or partition is kept as it is. Containers share the kernel's swap
    and may not call swapon(2), so there the operation only reports the skip (the deploy goes on).
    """
    profile = host_profile.read(path)
    if profile["container"]:
        msg = f"swap: skipped, a {profile['virt']} container cannot enable swap"
        logger.warning(f"{host.print_prefix}{msg}")  # shown without -v, unlike noop
        host.noop(msg)
        return
    if profile["swaps"]:
        host.noop(f"swap: already active ({', '.join(profile['swaps'])} KiB)")
        return
    q = shlex.quote(path)
    if profile["swap_file_bytes"] != size_mib * 1024 * 1024:
        yield f"rm -f {q}"
        # fallocate is instant on ext4/xfs; dd is the fallback swapon(8) documents.
        yield (f"fallocate -l {int(size_mib)}M {q} || "
               f"dd if=/dev/zero of={q} bs=1M count={int(size_mib)} status=none")
        yield f"chmod 600 {q}"
        yield f"mkswap {q}"
    yield f"swapon {q}"
    line = shlex.quote(f"{path} none swap sw 0 0")
    yield f"grep -qxF {line} /etc/fstab || echo {line} >> /etc/fstab"
