"""`python -m bridge` is `ca-bridge`."""

import sys

from bridge.cli import main

sys.exit(main())
