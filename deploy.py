"""The WatchMe server deploy. Only routes work to tasks/; each task owns one concern.

    pyinfra -y inventory.py deploy.py            # see README.md
"""

from tasks import bootstrap, connection, lock, disk, memory, monitor, network, nginx, units

connection.tune()
lock.acquire()  # one round trip: the lock, the last deploy's record, the planned facts
bootstrap.preflight()  # distro and sudo (served by the lock's round trip), before any change
memory.check()  # before any change: refuse a registry the host cannot hold
bootstrap.apply()
units.apply(network.apply())  # the network (and compose audit) before the units
nginx.apply()
monitor.apply()
disk.apply()
monitor.check_now()  # last: the monitor with --fix, after every other change
lock.release()  # keep last: releases the lock and records the deploy on the host
