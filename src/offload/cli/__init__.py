"""The ``offload`` command. The only place that reads environment variables (each option's
``--help`` names its variable). Every error is one line on stderr and a non-zero exit.

``main`` holds the group and its global options; ``context`` the app/backend lookup and the
error wrapper; ``jobs`` the commands that enqueue and inspect; ``processes`` ``worker`` and
``serve``; ``output`` how results are printed (the job shape is the HTTP API's).
"""

from offload.cli.main import main, run

__all__ = ["main", "run"]
