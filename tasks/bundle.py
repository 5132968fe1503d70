"""The rendered files of every task, uploaded and installed in one bundle (issue 13).

The tasks register what they render (their `render()`, or `overrides.apply()`); this
installs the changed ones in one operation after one fact (watchme/bundle.py). It runs
before the network task, which runs the host scripts it installs; unit files written here
are loaded only by the units task's daemon-reload.
"""

from watchme import bundle


def apply() -> None:
    bundle.install(name="Write the rendered files (one bundle upload)")
