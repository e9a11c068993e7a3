"""On-disk indexes the intake keeps while it reads: memory bounded at any input size."""
