"""``python -m netsvc``: the same client tools as the ``netsvc`` console command."""

import sys

from netsvc.cli import main

sys.exit(main())
