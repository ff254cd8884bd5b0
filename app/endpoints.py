"""The one rule for addresses Qiao trusts without TLS: loopback only (serving without auth, JWKS URLs, rest-hooks)."""

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_secure_url(url: str) -> bool:
    """https, or http on a loopback address (tests, a service on the same host)."""
    split = urlsplit(url)
    return bool(split.hostname) and (split.scheme == "https" or (split.scheme == "http" and is_loopback(split.hostname or "")))
