"""Standard Webhooks signing: the `webhook-signature` of a delivery, keyed with a `whsec_` secret.

`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
base64-decoded secret `whsec_<base64>` (at least 24 bytes, as the specification advises).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

WHSEC = "whsec_"
MIN_SECRET_BYTES = 24  # the Standard Webhooks specification: "between 24 bytes and 64 bytes"
MAKE_ONE = "python -c 'import base64,os; print(\"whsec_\" + base64.b64encode(os.urandom(32)).decode())'"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ValueError (never echoing it) for anything else."""
    if not secret.startswith(WHSEC):
        raise ValueError(f"must be whsec_ followed by base64 (Standard Webhooks); make one with: {MAKE_ONE}")
    text = secret.removeprefix(WHSEC).strip()  # a newline pasted in with it is not part of the key
    try:  # padding optional, as the reference implementation reads it; anything else not base64 is refused
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"the part after whsec_ is not base64; make one with: {MAKE_ONE}") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"decodes to {len(key)} bytes, fewer than {MIN_SECRET_BYTES}; make one with: {MAKE_ONE}"
        )
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery."""
    # Hand-written rather than standardwebhooks.Webhook.sign: it is one HMAC over bytes we already
    # hold, where the package's sign takes the body as str and the time as a datetime (a naive one
    # is silently read as UTC), and it would be a runtime dependency of every worker for four lines.
    # The package is the receiving side's reference: tests/integration/test_webhooks.py verifies
    # real deliveries with it, so any drift from the specification fails there.
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()
