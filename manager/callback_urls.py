"""Which backend URLs and addresses callbacks may reach.

Backends usually live on private networks, so private and loopback addresses
are allowed. Some addresses are always refused, because a callback there could
read cloud credentials or reach something that is not a backend at all:

- link-local addresses (169.254.0.0/16, fe80::/10) and cloud metadata
  services (169.254.169.254, fd00:ec2::254, 100.100.100.200, and Azure's
  platform address 168.63.129.16);
- unspecified addresses (0.0.0.0/8, ::), multicast (224.0.0.0/4, ff00::/8) and
  the reserved 240.0.0.0/4, which includes the broadcast address.

IPv6 forms that carry an IPv4 address (mapped ``::ffff:a.b.c.d``, compatible
``::a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d`` and 6to4 ``2002::/16``) are refused
when the IPv4 address inside is. An operator can also list allowed networks;
then every address must fall inside one of them.

Addresses are checked twice. :func:`validate_backend_url` checks a URL when
it is saved: IP-literal hosts are judged there, hostnames are not resolved.
:class:`GuardedResolver` checks what a hostname resolves to when the connection
is made, which defeats DNS rebinding. aiohttp does not consult the resolver for
IP-literal hosts, so whoever dispatches must validate the stored URL again
before using it; the function is pure and cheap.

Numeric IPv4 spellings other than the usual dotted quad (``2852039166``,
``0xa9fea9fe``, ``0251.0376.0251.0376``, ``169.254.43518``) are decoded as
``inet_aton`` would and then always refused: as the address they stand for if
that address is refused, and otherwise as ambiguous, asking for the dotted
quad. A hostname whose last label is numeric is read as such a spelling.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Sequence
from typing import TypeAlias
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from manager.errors import CallbackUrlError

logger = logging.getLogger(__name__)

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES = ("http", "https")
_LONGEST_URL = 2048
_LONGEST_HOST = 253

_HOST_LABEL = re.compile(r"[a-z0-9_-]+")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)

_ALWAYS_REFUSED = tuple(
    (ipaddress.ip_network(network), reason)
    for network, reason in (
        ("169.254.169.254/32", "cloud metadata addresses are always refused"),
        ("fd00:ec2::254/128", "cloud metadata addresses are always refused"),
        ("100.100.100.200/32", "cloud metadata addresses are always refused"),
        ("168.63.129.16/32", "cloud platform addresses are always refused"),
        ("169.254.0.0/16", "link-local addresses are always refused"),
        ("fe80::/10", "link-local addresses are always refused"),
        ("0.0.0.0/8", "unspecified addresses are always refused"),
        ("::/128", "unspecified addresses are always refused"),
        ("224.0.0.0/4", "multicast addresses are always refused"),
        ("ff00::/8", "multicast addresses are always refused"),
        ("240.0.0.0/4", "reserved and broadcast addresses are always refused"),
    )
)

_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressNotAllowedError(CallbackUrlError, OSError):
    """Every address a callback host resolved to was refused.

    It is an OSError so that aiohttp reports it as a connection error; its
    `errno` is EACCES.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # OSError fills these only when built from (errno, message), which
        # the other bases would not accept; aiohttp reads strerror.
        self.errno = errno.EACCES
        self.strerror = message

    def __str__(self) -> str:
        return str(self.strerror)


def validate_backend_url(url: str, allowed_networks: Sequence[str] = ()) -> str:
    """Return `url` normalised, or raise CallbackUrlError saying what is wrong.

    The scheme must be http or https, a host is required, and credentials and
    fragments are refused. An IP-literal host must be an allowed address.
    """
    networks = parse_networks(allowed_networks)
    parts = _split(url)

    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        message = f"scheme '{parts.scheme}' is not allowed; use http or https"
        raise CallbackUrlError(message)
    if "@" in parts.netloc:
        raise CallbackUrlError("URL must not contain a user name or password")
    if "#" in url:
        raise CallbackUrlError("URL must not contain a fragment")

    host = _normalised_host(parts.netloc, parts.hostname or "", networks)
    port = _port(parts)
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{host}{port}{parts.path}{query}"


def check_address(ip: str, allowed_networks: Sequence[str] = ()) -> None:
    """Raise CallbackUrlError unless callbacks may connect to address `ip`."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise CallbackUrlError(f"'{ip}' is not an IP address") from None

    reason = _refusal(address, parse_networks(allowed_networks))
    if reason is not None:
        raise CallbackUrlError(f"address {ip} is not allowed: {reason}")


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Parse CIDR strings, raising ValueError naming the first bad one."""
    return _parse_networks(tuple(values))


class GuardedResolver(AbstractResolver):
    """A resolver that drops addresses callbacks may not connect to.

    It wraps another resolver (by default aiohttp's own, which must be built
    inside the running event loop) and keeps only the addresses that
    :func:`check_address` allows. If none remain it raises
    AddressNotAllowedError, which aiohttp reports as a connection error.
    """

    def __init__(
        self,
        inner: AbstractResolver | None = None,
        *,
        allowed_networks: Sequence[str] = (),
    ) -> None:
        self._inner = inner if inner is not None else DefaultResolver()
        self._networks = parse_networks(allowed_networks)

    async def resolve(
        self,
        host: str,
        port: int = 0,
        family: socket.AddressFamily = socket.AF_INET,
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [result for result in results if self._allows(result["host"])]
        if len(allowed) == len(results):
            return allowed

        refused = sorted({result["host"] for result in results} - _hosts(allowed))
        extra = {"host": host, "addresses": refused}
        logger.warning("callback address refused", extra=extra)
        if not allowed:
            listing = ", ".join(refused)
            message = f"callback host {host} resolves only to refused addresses: "
            raise AddressNotAllowedError(message + listing)
        return allowed

    async def close(self) -> None:
        await self._inner.close()

    def _allows(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return _refusal(address, self._networks) is None


def _hosts(results: list[ResolveResult]) -> set[str]:
    return {result["host"] for result in results}


def _split(url: str) -> SplitResult:
    """Split a URL, refusing text that parsers might read differently."""
    if len(url) > _LONGEST_URL:
        raise CallbackUrlError(f"URL is longer than {_LONGEST_URL} characters")
    # urlsplit silently drops tabs and newlines, and some clients read a
    # backslash as a slash; either could make two parsers disagree on the host.
    if any(character <= " " or character in "\x7f\\" for character in url):
        message = "URL must not contain spaces, control characters or backslashes"
        raise CallbackUrlError(message)

    try:
        parts = urlsplit(url)
    except ValueError:
        raise CallbackUrlError("URL is malformed") from None

    if not parts.scheme:
        raise CallbackUrlError("URL must start with http:// or https://")
    return parts


def _normalised_host(netloc: str, hostname: str, networks: tuple[Network, ...]) -> str:
    """The host as it belongs in the normalised URL, after checking it."""
    if not hostname:
        raise CallbackUrlError("URL has no host")
    if netloc.startswith("["):
        return f"[{_ipv6_literal(hostname, networks)}]"
    if not hostname.isascii():
        message = f"host '{hostname}' must be written in ASCII (its xn-- form)"
        raise CallbackUrlError(message)

    labels = hostname.removesuffix(".").split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return str(_ipv4_literal(hostname, networks))

    valid = all(_HOST_LABEL.fullmatch(label) for label in labels)
    if not valid or len(hostname) > _LONGEST_HOST:
        raise CallbackUrlError(f"host '{hostname}' is not a valid host name")
    return hostname


def _ipv6_literal(hostname: str, networks: tuple[Network, ...]) -> str:
    """Check a bracketed IPv6 host; it stays as written, in lower case."""
    try:
        address = ipaddress.IPv6Address(hostname)
    except ValueError:
        message = f"host '[{hostname}]' is not a valid IPv6 address"
        raise CallbackUrlError(message) from None

    reason = _refusal(address, networks)
    if reason is not None:
        raise CallbackUrlError(f"address {hostname} is not allowed: {reason}")
    if address.scope_id is not None:
        raise CallbackUrlError(f"host '[{hostname}]' must not name a zone")
    return hostname


def _ipv4_literal(
    hostname: str, networks: tuple[Network, ...]
) -> ipaddress.IPv4Address:
    """Check a numeric host; only the usual dotted quad may pass."""
    try:
        address = ipaddress.IPv4Address(hostname)
    except ValueError:
        address = None

    if address is not None:
        reason = _refusal(address, networks)
        if reason is not None:
            raise CallbackUrlError(f"address {address} is not allowed: {reason}")
        return address

    meant = _legacy_ipv4(hostname)
    if meant is None:
        raise CallbackUrlError(f"host '{hostname}' is not a valid IPv4 address")

    reason = _refusal(meant, networks)
    if reason is not None:
        message = f"host '{hostname}' stands for {meant}, which is not allowed"
        raise CallbackUrlError(f"{message}: {reason}")
    message = f"host '{hostname}' is an ambiguous spelling of {meant}"
    raise CallbackUrlError(f"{message}; write it as {meant}")


def _legacy_ipv4(hostname: str) -> ipaddress.IPv4Address | None:
    """The address ``inet_aton`` reads from a legacy numeric spelling."""
    parts = hostname.removesuffix(".").split(".")
    if len(parts) > 4 or not all(_NUMERIC_LABEL.fullmatch(part) for part in parts):
        return None

    try:
        numbers = [_legacy_number(part) for part in parts]
    except ValueError:
        return None

    # Leading parts are single bytes; the last one fills the remaining bytes.
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(parts)):
        return None

    value = last
    for position, number in enumerate(leading):
        value += number << (8 * (3 - position))
    return ipaddress.IPv4Address(value)


def _legacy_number(text: str) -> int:
    """One part of a legacy spelling: hexadecimal, octal or decimal."""
    if text[:2].lower() == "0x":
        return int(text[2:] or "0", 16)
    if len(text) > 1 and text.startswith("0"):
        return int(text, 8)
    return int(text)


def _refusal(address: Address, networks: tuple[Network, ...]) -> str | None:
    """Why callbacks may not connect to `address`, or None if they may."""
    for candidate in (address, *_embedded_ipv4(address)):
        for network, reason in _ALWAYS_REFUSED:
            if candidate in network:
                return reason

    effective = _unmapped(address)
    if networks and not any(effective in network for network in networks):
        listing = ", ".join(str(network) for network in networks)
        return f"it is outside the allowed networks ({listing})"
    return None


def _embedded_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries, by the common conventions."""
    if isinstance(address, ipaddress.IPv4Address):
        return []

    embedded = [address.ipv4_mapped, address.sixtofour]
    low_bits = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        embedded.append(low_bits)
    # :: and ::1 are not IPv4-compatible addresses but themselves.
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        embedded.append(low_bits)
    return [candidate for candidate in embedded if candidate is not None]


def _unmapped(address: Address) -> Address:
    """The IPv4 address behind an IPv4-mapped IPv6 address, else itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _port(parts: SplitResult) -> str:
    """The port as it belongs in the normalised URL: ``:8080`` or nothing."""
    try:
        port = parts.port
    except ValueError:
        raise CallbackUrlError("URL has an invalid port") from None

    if port is None:
        return ""
    if port == 0:
        raise CallbackUrlError("URL has an invalid port")
    return f":{port}"


@functools.lru_cache(maxsize=64)
def _parse_networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    """parse_networks, cached: it runs on every check with the same list."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value))
        except ValueError as error:
            message = f"invalid network '{value}' in allowed networks: {error}"
            raise ValueError(message) from None
    return tuple(networks)
