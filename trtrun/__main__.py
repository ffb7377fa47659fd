"""`python -m trtrun ...` is the `trtrun` command."""

import sys

from .cli.main import main

sys.exit(main())
