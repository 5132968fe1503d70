"""The WatchMe server deploy. Only routes work to tasks/; each task owns one concern.

    pyinfra -y inventory.py deploy.py            # see README.md
"""

from watchme import prefetch
from tasks import (bootstrap, connection, lock, disk, images, memory, monitor, network, nginx,
                   overrides, units)

connection.tune()
bootstrap.preflight()  # distro and sudo, before anything uses sudo
lock.acquire()  # one deploy at a time: fails at once if another holds the host
prefetch.install()  # after the lock: one round trip for the facts the last run read
memory.check()  # before any change: refuse a registry the host cannot hold
bootstrap.apply()
images.apply()  # root's Docker client pulls from ECR through the credential helper
overridden = overrides.apply()  # per-service compose overrides: memory limit, fixed IP, pins
units.apply(network.apply())  # the network (and compose audit) before the units
nginx.apply()
monitor.apply()
disk.apply()
monitor.check_now()  # last: the monitor with --fix, after every other change
lock.release()  # keep last: releases the lock and records the deploy on the host
