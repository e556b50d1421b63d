"""`python -m shiftlab ...` (for clusters where shiftlab ships in a runtime_env, not installed)."""

import sys

from shiftlab.cli.main import main

sys.exit(main())
