"""`python -m api.cli`: the `taskmeter` command line."""

import sys

from api.cli import main

sys.exit(main())
