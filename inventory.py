"""pyinfra inventory: `production` from WATCHME_HOSTS, else the local `testhost`.

    WATCHME_HOSTS=ubuntu@203.0.113.10 WATCHME_SSH_KEY=~/watchme-key.pem \
        pyinfra -y inventory.py deploy.py

See README.md ("Targets") for every variable.
"""

import sys

from watchme.targets import TargetError, production as _production, testhost as _testhost

try:
    production = _production()
    testhost = _testhost()
except TargetError as e:
    sys.exit(f"inventory: {e}")
