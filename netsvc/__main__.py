"""``python -m netsvc`` is the ``netsvc`` command."""

import sys

from netsvc.cli import main

sys.exit(main())
