"""The WatchMe server deploy. Only routes work to tasks/; each task owns one concern.

    pyinfra -y inventory.py deploy.py            # see README.md
"""

from pyinfra import host

from watchme import settings
from tasks import (bootstrap, bundle, candidates, connection, disk, firewall, guard, images, lock,
                   memory, network, nginx, overrides, tls, units)

settings.require(host)  # the effective settings and registry, before any command
connection.tune()
lock.acquire()  # one round trip: the lock, the last deploy's record, the planned facts
profile = bootstrap.preflight()  # distro and sudo (served by the lock's round trip), before any change
memory.check()  # before any change: refuse a registry the host cannot hold
bootstrap.apply(profile)  # installs only what is missing in every form
images.apply()  # root's Docker client pulls from ECR through the credential helper
overridden = overrides.apply()  # per-service compose overrides: memory limit, fixed IP, pins
guard.render()  # the host scripts, the guard's settings and units
units.render()
tls.render()
nginx.render()  # the safe-apply script (the site itself goes through its own cycle)
bundle.apply()  # every file rendered above: one fact, one upload (issue 13)
units.apply(network.apply(), overridden)  # the network (and compose audit) before the units
overrides.prune()  # after the units stopped a removed service (its ExecStop names the file)
firewall.apply()  # a service's published port on a non-front host answers only to the front
tls.apply()  # the certificate (or a clear stop) before the site that uses it
nginx.apply()
candidates.clean()  # after the site: a killed rollout's candidate carries no route now
guard.apply()
disk.apply()
guard.check_now()  # last: the network check with --fix, after every other change
lock.release()  # keep last: releases the lock and records the deploy on the host
