"""``python -m locas``: the ``locas`` command."""

from .cli.main import entry

entry()
