"""watchme/swap.py, unit-tested pyinfra's way: a host profile in, commands or noop out."""

from __future__ import annotations

from tests.pyinfra_fake import run_op
from watchme.swap import swapfile


def profile(**overrides):
    base = {"container": False, "virt": "none", "swaps": [], "swap_file_bytes": 0}
    return {"HostProfile": {**base, **overrides}}


def test_swapfile_created_and_enabled_on_a_vm():
    cmds, host = run_op(swapfile, profile(), path="/swapfile", size_mib=2048)
    assert cmds[0] == "rm -f /swapfile"
    assert cmds[1].startswith("fallocate -l 2048M /swapfile || dd if=/dev/zero")
    assert cmds[2:5] == ["chmod 600 /swapfile", "mkswap /swapfile", "swapon /swapfile"]
    assert "/swapfile none swap sw 0 0" in cmds[5] and not host.noops


def test_swapfile_of_right_size_is_only_switched_on():
    cmds, _ = run_op(swapfile, profile(swap_file_bytes=2048 << 20), path="/swapfile", size_mib=2048)
    assert cmds[0] == "swapon /swapfile"


def test_swapfile_noop_when_swap_active():
    cmds, host = run_op(swapfile, profile(swaps=["/dev/zram0 1048576"]), path="/swapfile",
                        size_mib=2048)
    assert cmds == [] and host.noops == ["swap: already active (/dev/zram0 1048576 KiB)"]


def test_swapfile_skipped_in_a_container():
    cmds, host = run_op(swapfile, profile(container=True, virt="docker"), path="/swapfile",
                        size_mib=2048)
    assert cmds == [] and host.noops == ["swap: skipped, a docker container cannot enable swap"]


def test_swapfile_path_is_quoted():
    cmds, _ = run_op(swapfile, profile(), path="/srv/swap file", size_mib=16)
    assert cmds[0] == "rm -f '/srv/swap file'"
    assert cmds[-1] == ("grep -qxF '/srv/swap file none swap sw 0 0' /etc/fstab || "
                        "echo '/srv/swap file none swap sw 0 0' >> /etc/fstab")
