"""pyinfra inventory: `production` from WATCHME_HOSTS, else the local `testhost`.

    WATCHME_HOSTS=ubuntu@203.0.113.10 WATCHME_SSH_KEY=~/watchme-key.pem \
        pyinfra -y inventory.py deploy.py

With WATCHME_REPLAY_DIR (the pull-request preview), `production` is the recorded hosts,
answered offline by watchme/replay.py: no SSH, no secret. See README.md ("Targets", "CI").
"""

import os
import sys

from watchme.placement import PlacementError, check_inventory
from watchme.targets import TargetError, production as _production, replay as _replay
from watchme.targets import testhost as _testhost

try:
    production = _replay() or _production()
    testhost = _testhost()
    # registry `host:` fields and WATCHME_PRIVATE_ADDRESSES name inventory hosts (before SSH)
    check_inventory(production or testhost, os.environ)
except (TargetError, PlacementError) as e:
    sys.exit(f"inventory: {e}")
