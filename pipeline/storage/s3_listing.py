"""A paged listing of an S3 prefix, for listings that must not grow with the output.

pyarrow's `get_file_info(FileSelector)` returns a prefix's whole listing at once, ~400
bytes a file while it is held: 0.4 GB when a job of a million shards is finalised.
S3's ListObjectsV2 answers 1,000 keys a page; walked through boto3's paginator, a listing
holds one page. boto3 is the optional `m3pipe[s3]` extra (the image installs it); without
it, `paged_s3_client` says so once and callers fall back to pyarrow's listing.

The client is made to reach the store pyarrow reaches: the endpoint and region from the
URL's options (`endpoint_override`, `scheme`, `region`) or pyarrow's resolved region, the
credentials from the same environment (AWS_* variables, profile, instance or pod role).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import parse_qsl

log = logging.getLogger(__name__)

PAGE_KEYS = 1000  # S3's largest page


@functools.lru_cache(maxsize=32)
def paged_s3_client(query: str, region: str) -> Any | None:
    """A boto3 S3 client for the store a pyarrow S3 URL with options `query` reaches, or
    None (logged once) where boto3 is not installed."""
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:
        log.warning(
            "boto3 is not installed (pip install 'm3pipe[s3]'): S3 listings come whole "
            "from pyarrow, ~400 bytes a file while they are held"
        )
        return None
    options = dict(parse_qsl(query))
    endpoint = options.get("endpoint_override") or None
    if endpoint and "://" not in endpoint:
        endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
    anonymous = options.get("anonymous", "").lower() in ("1", "true")
    config = Config(signature_version=UNSIGNED) if anonymous else None
    # Without an endpoint in the URL, boto3 reads AWS_ENDPOINT_URL as pyarrow does.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=options.get("region") or region or None,
        config=config,
    )


def s3_file_names(client: Any, path: str, pattern: str) -> Iterator[str]:
    """Names of the objects directly under `path` ("bucket/prefix") that match `pattern`,
    in key order, a page at a time. A missing bucket lists nothing (as pyarrow's
    `allow_not_found`); any other failure is an OSError, as pyarrow's would be."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = path.strip("/").partition("/")
    prefix = f"{prefix}/" if prefix else ""
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket,
        Prefix=prefix,
        Delimiter="/",  # "subdirectories" come as common prefixes, not walked
        PaginationConfig={"PageSize": PAGE_KEYS},
    )
    try:
        for page in pages:
            for entry in page.get("Contents", ()):
                name = str(entry["Key"])[len(prefix) :]
                if name and fnmatchcase(name, pattern):
                    yield name
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return
        raise OSError(f"cannot list s3://{path}: {exc}") from exc
    except BotoCoreError as exc:
        raise OSError(f"cannot list s3://{path}: {exc}") from exc
