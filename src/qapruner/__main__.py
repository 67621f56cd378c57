"""``python -m qapruner`` (and ``accelerate launch -m qapruner``): the command line."""

import sys

from .cli import main

sys.exit(main())
