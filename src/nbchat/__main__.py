"""``python -m nbchat`` is the ``nbchat`` command."""

import sys

from .cli import main

sys.exit(main())
