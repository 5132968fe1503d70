"""pytest fixtures for modules that test against the production replica.

    from tests.replica.fixture import testhost  # noqa: F401  (replaces conftest's blank host)

Importing `testhost` makes conftest's `host`, `deploy` and `testhost_env` use a fresh replica
(started from the cached image; built first when its recipe changed).
"""

from __future__ import annotations

import pytest

from tests import replica as _replica
from watchme import testhost as th


@pytest.fixture(scope="module")
def testhost():
    host = _replica.start()
    yield host
    th.stop(host.name)


replica = testhost
