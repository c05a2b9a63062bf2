"""The ``eventmill`` command (layer 6): ``serve`` the gateway, and the operator's tools —
``keys``, ``endpoints``, ``deliveries``, ``events``, ``publish``, ``tail``, ``trace``,
``config``, ``migrate``, ``demo``. See :mod:`eventmill.cli._common` for what they share.
"""

from eventmill.cli import config, delivery, events, keys, serve  # noqa: F401 - each registers its commands
from eventmill.cli._common import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``eventmill`` console script."""
    app()
