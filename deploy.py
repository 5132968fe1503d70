"""The WatchMe server deploy. Only routes work to tasks/; each task owns one concern.

    pyinfra -y inventory.py deploy.py            # see README.md
"""

from watchme import prefetch
from tasks import bootstrap, connection, lock, disk, memory, monitor, network, nginx, units

connection.tune()
profile = bootstrap.preflight()  # distro and sudo, before anything uses sudo (one read)
lock.acquire()  # one deploy at a time: fails at once if another holds the host
prefetch.install()  # after the lock: one round trip for the facts the last run read
memory.check()  # before any change: refuse a registry the host cannot hold
bootstrap.apply(profile)  # installs only what is missing in every form
units.apply(network.apply())  # the network (and compose audit) before the units
nginx.apply()
monitor.apply()
disk.apply()
monitor.check_now()  # last: the monitor with --fix, after every other change
lock.release()  # keep last: releases the lock and records the deploy on the host
