"""``python -m locas.cli`` (what torchrun launches)."""

from .main import entry

entry()
