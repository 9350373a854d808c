"""``python -m locas.cli`` (what torchrun launches)."""

import sys

from .main import main

sys.exit(main())
