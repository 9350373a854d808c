"""``python -m locas``: the ``locas`` command."""

import sys

from .cli.main import main

sys.exit(main())
