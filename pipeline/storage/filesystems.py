"""Which filesystem serves a URL: pyarrow's own (s3://, gs://, abfs://, hdfs://), else an
fsspec one wrapped for pyarrow where fsspec and the scheme's package are installed. A URL
that carries credentials is refused: it would be stored in Redis, `_job.json` and logs."""

from __future__ import annotations

import functools
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import StorageError

# Query options of pyarrow's S3/GCS/Azure URIs that would put a secret in the URL.
_SECRET_OPTIONS = frozenset(
    {"access_key", "secret_key", "session_token", "access_token", "account_key", "sas_token"}
)
MAX_ERROR_CHARS = 500  # some filesystems' errors run to pages (e.g. a JVM search path)


def refuse_secrets(url: str) -> None:
    parts = urlsplit(url)
    secrets = sorted({key for key, _ in parse_qsl(parts.query)} & _SECRET_OPTIONS)
    if parts.password is not None or secrets:
        where = ", ".join(secrets) if secrets else "user:password"
        raise StorageError(
            f"credentials in a URL ({where}) would be stored in Redis, _job.json and logs; "
            "give them through the environment instead (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance/pod role)"
        )


@functools.lru_cache(maxsize=32)
def filesystem_of(base: str, query: str) -> tuple[pafs.FileSystem, str]:
    """One filesystem object per store: S3 resolves the bucket's region when it is made."""
    url = f"{base}?{query}" if query else base
    try:
        return pafs.FileSystem.from_uri(url)
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise StorageError(f"cannot use {base}: {shortened(exc)}") from exc
    except OSError as exc:
        raise StorageError(f"cannot use {base}: {shortened(exc)}") from exc
    return _fsspec_filesystem(url)


def _fsspec_filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """Schemes pyarrow lacks, through fsspec when it and the scheme's package are installed."""
    scheme = url.split("://", 1)[0]
    try:
        import fsspec  # optional: only for schemes pyarrow has no filesystem for

        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise StorageError(
            f"no filesystem for {scheme}:// URLs ({shortened(exc)}); pyarrow reads s3://, gs://, "
            "abfs:// and hdfs://, and fsspec schemes work when their package is installed"
        ) from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), str(path)


def shortened(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " ..."
