"""Credentials out of every URL that is shown or recorded.

URLs can carry secrets: `https://user:token@host/...`, or a signed URL's query string
(`?X-Amz-Signature=...`, `?sig=...`) that grants access to whoever reads it. Manifests,
reports, error lines and progress output are read by many more people than the credentials
were meant for, so every URL written there goes through `redact_url` (or `redact_text` for a
message that may quote one, as network errors do): the user information and every query and
fragment value become REDACTED; scheme, host and path stay, so the URL still says which
object it was.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "REDACTED"
# A URL inside a message: a scheme, "://", then anything up to a space, a quote or a bracket.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]]+")


def redact_url(url: str) -> str:
    """`url` without its credentials (a plain path, which has none, unchanged)."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed URL: say nothing of what follows the scheme
        return url.partition("://")[0] + "://" + REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            parts.path,
            _redact_pairs(parts.query),
            _redact_pairs(parts.fragment),
        )
    )


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group()), text)


def path_name(url: str) -> str:
    """The last name of a URL's path, never its query or credentials: what an output in a
    folder is called (`https://h/a/x.tar?sig=S` -> `x.tar`)."""
    path = urlsplit(url).path if "://" in url else url
    return path.rstrip("/").rsplit("/", 1)[-1]


def _redact_pairs(text: str) -> str:
    if not text:
        return text
    pairs = []
    for pair in text.split("&"):
        name, equals, _ = pair.partition("=")
        pairs.append(f"{name}={REDACTED}" if equals else REDACTED)
    return "&".join(pairs)
