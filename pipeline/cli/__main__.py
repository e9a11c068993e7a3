"""`python -m pipeline.cli`: the m3pipe command."""

import sys

from pipeline.cli.main import main

sys.exit(main())
