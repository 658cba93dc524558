"""`python -m groupcoop ...` (and `torchrun -m groupcoop extract ...`) run the command line."""

import sys

from .cli.main import main

sys.exit(main())
