"""The WatchMe server deploy. Only routes work to tasks/; each task owns one concern.

    pyinfra -y inventory.py deploy.py            # see README.md
"""

from tasks import bootstrap, connection

connection.tune()
bootstrap.apply()
