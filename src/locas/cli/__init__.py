"""The command line: the command table (``main``), flags generated from the config dataclasses
(``flags``) and one module per subcommand (``commands``). Nothing below imports from here.

    $ locas --help          # or: python -m locas, python -m locas.cli
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
