"""Credentials in URIs kept out of rows, messages and logs, and out of video ids.

A manifest may give presigned URLs (`?X-Amz-Signature=...`), API keys in query strings
(`?key=...`, `?hdnts=...`) or `user:password@host` URIs. The job fetches them as given, but what
it writes and prints shows `REDACTED` in place of the secret (`redact_uri`, and `redact` for any
text that quotes URIs): userinfo always, and the value of every query (and fragment) parameter
whose name is not on a short list of names known to carry no secret (`HARMLESS_PARAMETERS`).
Scheme, host, port and path are kept, so a message still says which file. The default video id
of such a URI is computed without its signing parameters (`unsigned_uri`), so that re-signing
the same object keeps its id and an incremental run skips it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import pyarrow as pa

REDACTED = "REDACTED"
SIGNATURE_DETAILS = frozenset(
    {"x-amz-algorithm", "x-amz-date", "x-amz-expires", "x-amz-signedheaders", "expires"}
    | {"x-goog-algorithm", "x-goog-date", "x-goog-expires", "x-goog-signedheaders"}
)
"""A presigned URL's parameters that say when it was signed and for how long: never the
signature or the key, and what a 403 is explained by."""
HARMLESS_PARAMETERS = SIGNATURE_DETAILS | frozenset(
    {"format", "width", "height", "w", "h", "t", "start", "end", "duration", "quality", "fps"}
    | {"resolution", "alt", "versionid", "generation", "partnumber", "response-content-type"}
)
"""Query parameters whose values are shown (names compared percent-decoded, in lower case):
what is fetched, which version of it, and when it was signed. Every other parameter's value is
`REDACTED`."""
SIGNING_PARAMETERS = SIGNATURE_DETAILS | frozenset(
    {"x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "sig"}
    | {"token", "access_token", "awsaccesskeyid", "x-goog-signature", "x-goog-credential"}
    | {"se", "st", "sv", "sp", "spr", "sr", "ss", "srt"}  # Azure shared access signatures
)
"""Query parameters that change when the same object is signed again (left out of ids)."""

_URI_CHARACTERS = r"A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%"
"""RFC 3986's unreserved, reserved and percent characters: all a URI may hold."""
_URI = re.compile(
    rf"[A-Za-z][A-Za-z0-9+.-]*://(?:[^\s/?#]*@)?[{_URI_CHARACTERS}]*",
)
"""A URI in text: scheme, then userinfo up to the authority's last `@` (whatever it holds, as
a fetcher reads it), then RFC 3986's characters; text around URIs ends them with a space, `"`,
`<`, `>` or another character a URI cannot hold (RFC 3986, appendix C)."""
_PARTS = re.compile(r"(?P<scheme>[^:]*://)(?P<authority>[^/?#]*)(?P<path>[^?#]*)(?P<rest>.*)", re.S)
_SENTENCE_END = ".,;:!?"


def redact_uri(uri: str) -> str:
    """`uri` with its userinfo and the values of its parameters not on the harmless list
    replaced by `REDACTED`; URIs without them come back unchanged, character for character."""
    parts = _PARTS.fullmatch(uri)
    if parts is None:
        return uri
    authority = parts["authority"]
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rsplit('@', 1)[1]}"
    rest = re.sub(r"(?<=[?#&;])[^&;#]+", _redacted_parameter, parts["rest"])
    return parts["scheme"] + authority + parts["path"] + rest


def redact(text: str) -> str:
    """`text` with every URI in it redacted (`redact_uri`). Closing punctuation that the URI
    could hold but the text put after it (`.`, `)` closing a `(` before the URI, a quote) stays
    outside it."""
    if "://" not in text:
        return text
    return _URI.sub(_redacted_match, text)


def error_text(error: BaseException) -> str:
    """`error` as one line, its type then its message, with `redact` applied."""
    return redact(f"{type(error).__name__}: {error}")


def _redacted_match(match: re.Match) -> str:
    uri = match[0]
    before = match.string[match.start() - 1] if match.start() else ""
    kept = len(_trimmed(uri, before))
    return redact_uri(uri[:kept]) + uri[kept:]


def _trimmed(uri: str, before: str) -> str:
    """`uri` less the characters at its end that belong to the text around it."""
    while uri and _belongs_to_text(uri, before):
        uri = uri[:-1]
    return uri


def _belongs_to_text(uri: str, before: str) -> bool:
    """Whether the last character of `uri` ends a sentence, closes a bracket opened before
    the URI, or closes the quote it began after."""
    last = uri[-1]
    opens = {")": "(", "]": "["}.get(last)
    if opens:
        return uri.count(last) > uri.count(opens)
    return last in _SENTENCE_END or (last == "'" and before == "'")


def _redacted_parameter(parameter: re.Match) -> str:
    name, equals, value = parameter[0].partition("=")
    if unquote_plus(name).lower() in HARMLESS_PARAMETERS:
        return parameter[0]
    return f"{name}={REDACTED}" if equals else REDACTED


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
