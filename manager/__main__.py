"""`python -m manager` is the `manager` command."""

import sys

from manager.cli import main

sys.exit(main())
