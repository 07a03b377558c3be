"""`python -m tfodtrain.report RUN_DIR`: see tfodtrain.report."""

import sys

from tfodtrain.report.cli import main

sys.exit(main())
