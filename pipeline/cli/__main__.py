"""`python -m pipeline.cli`: the m3pipe command."""

from pipeline.cli.main import entry

entry()
