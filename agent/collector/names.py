"""Host names as the collector binds them: the journal's ``host`` field, the certificate's CN."""

from __future__ import annotations

import re

from agent.collector.errors import CollectorError

# A hostname as gethostname(2) returns it (letters, digits, dot, hyphen; underscore too, which
# some fleets use), at most 64 like HOST_NAME_MAX and a certificate's CN, usable in a URN as is.
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}").fullmatch
#: The URI SAN of a client certificate names its host as ``urn:sealtrail:host:<name>``.
HOST_URN_PREFIX = "urn:sealtrail:host:"


def check_host_name(name: str) -> str:
    """Return ``name`` if it is a usable host name, else raise naming the rule."""
    if not isinstance(name, str) or not _HOST(name):
        raise CollectorError(
            f"host name {name!r} is not usable: 1 to 64 characters, letters, digits, '.', '_' "
            "and '-', starting with a letter or digit (the journal's host field)"
        )
    return name


def host_urn(name: str) -> str:
    return HOST_URN_PREFIX + check_host_name(name)
