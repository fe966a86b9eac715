"""Credentials in URIs kept out of rows, messages and logs, and out of video ids.

A manifest may give presigned URLs (`?X-Amz-Signature=...`) or `user:password@host` URIs. The
job fetches them as given, but what it writes and prints shows `REDACTED` in place of the
secret (`redact_uri`, and `redact` for any text that quotes URIs), and the default video id of
such a URI is computed without its signing parameters (`unsigned_uri`), so that re-signing the
same object keeps its id and an incremental run skips it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

REDACTED = "REDACTED"
SECRET_PARAMETERS = frozenset(
    {"x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "sig"}
    | {"token", "access_token", "awsaccesskeyid", "x-goog-signature", "x-goog-credential"}
)
"""Query parameters whose values are secrets (compared in lower case)."""
SIGNING_PARAMETERS = SECRET_PARAMETERS | frozenset(
    {"x-amz-algorithm", "x-amz-date", "x-amz-expires", "x-amz-signedheaders", "expires"}
    | {"x-goog-algorithm", "x-goog-date", "x-goog-expires", "x-goog-signedheaders"}
    | {"se", "st", "sv", "sp", "spr", "sr", "ss", "srt"}  # Azure shared access signatures
)
"""Query parameters that change when the same object is signed again."""

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def redact_uri(uri: str) -> str:
    """`uri` with its userinfo and secret query values replaced by `REDACTED`; URIs without
    them come back unchanged, character for character."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{name}={REDACTED}" if name.lower() in SECRET_PARAMETERS else item
        for item, name in _parameters(parts.query)
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return uri
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact(text: str) -> str:
    """`text` with every URI in it redacted (`redact_uri`)."""
    if "://" not in text:
        return text
    return _URI.sub(lambda match: redact_uri(match[0]), text)


def unsigned_uri(uri: str) -> str:
    """`uri` without userinfo and signing parameters: what stays the same when it is signed
    again. The default video id is made from this."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(
        item for item, name in _parameters(parts.query) if name.lower() not in SIGNING_PARAMETERS
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return uri
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _parameters(query: str) -> list[tuple[str, str]]:
    """(item as written, its name) for each `&`-separated item of a query string."""
    return [(item, item.split("=", 1)[0]) for item in query.split("&")]


def redacted_uris(batch: pa.Table) -> pa.Table:
    """`batch` with its `uri` column as `redact_uri` shows it (once the videos are fetched)."""
    shown = [redact_uri(uri) for uri in batch.column("uri").to_pylist()]
    return batch.set_column(batch.schema.get_field_index("uri"), "uri", pa.array(shown))
