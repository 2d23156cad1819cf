"""Standard Webhooks signatures for trigger callbacks.

A callback carries three headers: ``webhook-id`` (the run id, so a receiver can
drop redelivered duplicates), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: ``v1,`` followed by the base64 HMAC-SHA256 of
``{id}.{timestamp}.{body}``. The HMAC key is the base64-decoded part of the
application's ``whsec_`` secret.

The header may hold several space-separated signatures, for example while a
secret is being rotated; one match is enough. :func:`verify` is the receiver's
side of the scheme, used by our tests and usable by backends written in Python.

Nothing here logs, and no error message contains a secret or a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

from manager.errors import ManagerError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

_SIGNATURE_PREFIX = "v1,"
_KEY_BYTES = 32
_TIMESTAMP = re.compile(r"[0-9]+")
# aiohttp decodes header bytes this way; encoding back the same way
# recovers exactly the bytes that were sent.
_HEADER_ERRORS = "surrogateescape"


class SignatureError(ManagerError):
    """A request's webhook signature headers are missing, stale or wrong."""


def generate_secret() -> str:
    """A new signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    key = secrets.token_bytes(_KEY_BYTES)
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret; ValueError if malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"signing secret must start with '{SECRET_PREFIX}'")

    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("signing secret is not valid base64") from None

    if not key:
        raise ValueError("signing secret has an empty key")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,`` signature of one request."""
    return _signature(secret_key(secret), message_id, str(timestamp), body)


def signature_headers(
    secret: str, message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three headers that sign one request."""
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, message_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE,
) -> None:
    """Check a request's signature headers, raising SignatureError if wrong.

    `now` is the receiver's clock in Unix seconds; the timestamp may differ
    from it by at most `tolerance` seconds either way, which limits replays.
    """
    key = secret_key(secret)
    found = {name.lower(): value for name, value in headers.items()}
    message_id = _header(found, ID_HEADER)
    timestamp = _header(found, TIMESTAMP_HEADER)
    signatures = _header(found, SIGNATURE_HEADER)

    if _TIMESTAMP.fullmatch(timestamp) is None:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix timestamp")
    if abs(now - int(timestamp)) > tolerance:
        message = f"{TIMESTAMP_HEADER} is more than {tolerance}s away from now"
        raise SignatureError(message)

    # The signed text is the header as sent, not the number re-printed.
    expected = _signature(key, message_id, timestamp, body).encode()
    for candidate in signatures.split(" "):
        if hmac.compare_digest(candidate.encode("utf-8", _HEADER_ERRORS), expected):
            return
    raise SignatureError(f"no {SIGNATURE_HEADER} matches the request")


def _signature(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    """``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode("utf-8", _HEADER_ERRORS) + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return _SIGNATURE_PREFIX + base64.b64encode(digest).decode("ascii")


def _header(headers: Mapping[str, str], name: str) -> str:
    """A required header's value, raising SignatureError if it is absent."""
    value = headers.get(name)
    if not value:
        raise SignatureError(f"missing {name} header")
    return value
