"""Where output goes: locations (local paths, s3:// and other URLs), atomic commits, the Parquet
sink, the output directory layout and manifest, allowed output roots.
"""
