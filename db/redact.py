"""Keeping secrets out of what we print: the one place that knows what a secret looks like.

A secret is the password in DATABASE_URL (found even when the URL is malformed, because that is
when libpq echoes it back: `invalid percent-encoded token: "S3cr3t%Passw0rd!"`), PGPASSWORD, and
the value of any setting whose name says it is one (`*_SECRET`, `*_API_KEY`, `*_TOKEN`,
`*_PASSWORD`). Error messages are scrubbed where they are made (db.connect, the CLI, the
provider calls, and every exception that becomes stored data: worker.outcome.ErrorInfo.of);
`Redactor` wraps the structlog renderer and scrubs every log line, the last line of defence for
a message we did not foresee.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words; such a "secret" is no secret anyway
SECRET_NAME = re.compile(r"(?:^|_)(?:SECRET|API_KEY|TOKEN|PASSWORD)$|^PGPASSWORD$", re.IGNORECASE)
# scheme://user:password@rest. The password runs to the LAST "@" (see _passwords): one typed with
# an unescaped "@" is still all masked, although libpq would split it there and call the tail the host.
URL_USERINFO = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*:(?P<password>.*)@[^@]*$", re.DOTALL)
URL_RESERVED = re.compile(r"[@/?#]")
QUERY_START = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")  # a libpq URL parameter: name=value
PASSWORD_PARAM = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def _passwords(url: str) -> list[re.Match[str]]:
    """Where a URL's password may be: up to the last "@" before the query, or the last "@" at all.

    A query may hold an "@" of its own (`application_name=me@laptop`), a password a "?": both
    readings are kept, so neither hides a password, the likelier first (see _query_at_sign).
    """
    head = url.partition("?")[0]
    readings = [m for m in (URL_USERINFO.match(head), URL_USERINFO.match(url)) if m and m["password"]]
    return readings if _query_at_sign(url) else readings[::-1]


def url_secrets(url: str) -> tuple[str, ...]:
    """The password of a Postgres URL or key=value conninfo string, as written and decoded."""
    found: list[str] = []
    for userinfo in _passwords(url):
        found.append(userinfo["password"])
        # libpq splits a password holding a reserved character and may quote a piece of it
        # (as the host, the port, the database): each piece is a secret too.
        found += URL_RESERVED.split(userinfo["password"])
    for param in PASSWORD_PARAM.finditer(url):
        value = param["value"]
        found.append(value)
        if value.startswith("'") and value.endswith("'") and len(value) > 1:
            found.append(value[1:-1])
    decoded = [unquote(s) for s in found]
    return _worth_masking([*found, *decoded])


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for messages that must name it."""
    readings = _passwords(url)
    if readings:
        url = url[: readings[0].start("password")] + MASK + url[readings[0].end("password") :]
    return PASSWORD_PARAM.sub(lambda m: f"{m['key']}{MASK}", url)


def _query_at_sign(url: str) -> bool:
    """Whether the URL's last "@" is a query's (`?application_name=me@laptop`), not the end of a
    password holding "?": the text after the first "?" reads `name=...` and no "/" follows the
    last "@" (a host and database would). Else the reading up to the last "@" comes first, the safe side.
    """
    query = url.partition("?")[2]
    return QUERY_START.match(query) is not None and "/" not in url.rpartition("@")[2]


def reserved_in_password(url: str) -> bool:
    """True when a URL's password holds "@", "/", "?" or "#" unescaped (libpq would split it there)."""
    readings = _passwords(url)
    return bool(readings) and URL_RESERVED.search(readings[0]["password"]) is not None


def environment_secrets(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Every secret the process's environment holds: DATABASE_URL's password and secret-named values."""
    found: list[str] = list(url_secrets(environ.get("DATABASE_URL", "")))
    for name, value in environ.items():
        if SECRET_NAME.search(name):
            found.append(value)
    return _worth_masking(found)


def process_secrets() -> tuple[str, ...]:
    """The secrets this process knows: its environment's (the set the CLI masks in its logs).

    Read again on each call rather than cached (a cache would be module-level state; it costs
    some 40 us, paid once per failed attempt, not per job).
    """
    return environment_secrets(os.environ)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with each secret replaced by ***, as written and as a URL carries it (percent-encoded)."""
    for form in _written_forms(secrets):
        text = text.replace(form, MASK)
    return text


def _written_forms(secrets: Iterable[str]) -> tuple[str, ...]:
    """Each secret as written and percent-encoded, longest first (one may contain another)."""
    forms = {
        form
        for secret in _worth_masking(secrets)
        # An HTTP client's error names the URL: a key sent as a query parameter is escaped there.
        for form in (secret, quote(secret, safe=""), quote_plus(secret, safe=""))
    }
    return tuple(sorted(forms, key=len, reverse=True))


class Redactor:
    """Wraps a structlog renderer: every line it renders is scrubbed of known secret values.

    Scrubbing the rendered line rather than each value of the event costs one `in` per secret
    on one string (0.1-0.2 us a line), covers keys, nested values and the tracebacks the console
    renderer draws, and catches a secret however JSON escaped it.
    """

    def __init__(self, renderer: Callable[..., Any], secrets: Iterable[str]) -> None:
        self._renderer = renderer
        forms: list[str] = []
        for form in _written_forms(secrets):
            # As the JSON renderers write it: escaped, and escaped to ASCII (the stdlib fallback).
            forms += [form, json.dumps(form, ensure_ascii=False)[1:-1], json.dumps(form)[1:-1]]
        self._forms = tuple(sorted(set(forms), key=len, reverse=True))  # longest first

    def __call__(self, logger: object, name: str, event: MutableMapping[str, Any]) -> Any:
        """Render the event, then mask every secret in the line."""
        line = self._renderer(logger, name, event)
        if isinstance(line, str):
            for form in self._forms:
                if form in line:
                    line = line.replace(form, MASK)
        return line


def _worth_masking(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if len(v) >= MIN_SECRET_LENGTH))
