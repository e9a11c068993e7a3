"""`python -m pipeline.cli`: the m3pipe command."""

import sys

from pipeline.cli.main import entry

sys.exit(entry())
