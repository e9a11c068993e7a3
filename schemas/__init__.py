"""Records and wire formats of m3pipe. Imports nothing from the rest of the project."""

from schemas.document import Document, Reject
from schemas.options import EncodeOptions, LongDocPolicy, Mode, StorageDtype
from schemas.output import OUTPUT_METADATA_KEY, output_schema

__all__ = [
    "OUTPUT_METADATA_KEY",
    "Document",
    "EncodeOptions",
    "LongDocPolicy",
    "Mode",
    "Reject",
    "StorageDtype",
    "output_schema",
]
