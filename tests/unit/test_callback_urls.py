"""Unit tests of manager.callback_urls, with a real aiohttp client and server."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from manager.callback_urls import (
    AddressNotAllowedError,
    GuardedResolver,
    check_address,
    parse_networks,
    validate_backend_url,
)
from manager.errors import CallbackUrlError, ManagerError

# validate_backend_url


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("http://backend.internal/hooks", "http://backend.internal/hooks"),
        (
            "HTTPS://Backend.Example.COM:8443/a?b=c",
            "https://backend.example.com:8443/a?b=c",
        ),
        ("http://10.1.2.3:8080", "http://10.1.2.3:8080"),
        ("http://172.16.0.9/x", "http://172.16.0.9/x"),
        ("http://192.168.1.20/x", "http://192.168.1.20/x"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000/"),
        ("http://[::1]:9000/", "http://[::1]:9000/"),
        ("http://[FD12::5]/", "http://[fd12::5]/"),
        ("http://localhost/", "http://localhost/"),
        ("http://my_service:8080/", "http://my_service:8080/"),
        ("http://xn--bcher-kva.example/", "http://xn--bcher-kva.example/"),
        ("http://100.64.1.1/", "http://100.64.1.1/"),
        ("http://8.8.8.8/", "http://8.8.8.8/"),
    ],
)
def test_validate_backend_url_accepts_and_normalises(url: str, normalised: str) -> None:
    assert validate_backend_url(url) == normalised


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed; use http or https"),
        ("gopher://backend:70/", "scheme 'gopher' is not allowed"),
        ("ftp://backend/", "scheme 'ftp' is not allowed"),
        ("javascript:alert(1)", "scheme 'javascript' is not allowed"),
        ("data:text/plain,hello", "scheme 'data' is not allowed"),
        ("ws://backend/", "scheme 'ws' is not allowed"),
        ("backend.internal/hooks", "must start with http:// or https://"),
        ("//backend.internal/hooks", "must start with http:// or https://"),
        ("http:///hooks", "URL has no host"),
        ("http:backend", "URL has no host"),
        ("http://user:secret@backend/", "must not contain a user name or password"),
        ("http://user@backend/", "must not contain a user name or password"),
        ("http://@backend/", "must not contain a user name or password"),
        ("http://backend/hooks#part", "must not contain a fragment"),
        ("http://backend/#", "must not contain a fragment"),
        ("http://back end/", "must not contain spaces"),
        ("http://back\tend/", "must not contain spaces"),
        ("http://backend\n/", "must not contain spaces"),
        ("http://evil.example\\@backend/", "backslashes"),
        ("http://backend:99999/", "invalid port"),
        ("http://backend:0/", "invalid port"),
        ("http://backend:http/", "invalid port"),
        ("http://[::1/", "URL is malformed"),
        ("http://bücher.example/", "must be written in ASCII"),
        ("http://a..b/", "'a..b' is not a valid host name"),
        ("http://exa%6dple.com/", "is not a valid host name"),
        ("http://backend.123/", "'backend.123' is not a valid IPv4 address"),
        ("http://[fd00::1%25eth0]/", "must not name a zone"),
        ("http://" + "a" * 2050, "longer than 2048 characters"),
    ],
)
def test_validate_backend_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(CallbackUrlError) as caught:
        validate_backend_url(url)

    assert message in str(caught.value)


ALWAYS_REFUSED_HOSTS = [
    # link-local and metadata
    ("169.254.169.254", "cloud metadata"),
    ("169.254.0.1", "link-local"),
    ("[fe80::1]", "link-local"),
    ("[FE80::a:b]", "link-local"),
    ("[febf::1]", "link-local"),
    ("[fe80::1%25eth0]", "link-local"),
    ("[fd00:ec2::254]", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("168.63.129.16", "cloud platform"),
    # IPv6 forms carrying a refused IPv4 address
    ("[::ffff:169.254.169.254]", "cloud metadata"),
    ("[::ffff:a9fe:a9fe]", "cloud metadata"),
    ("[0:0:0:0:0:ffff:169.254.1.1]", "link-local"),
    ("[::169.254.169.254]", "cloud metadata"),
    ("[64:ff9b::169.254.169.254]", "cloud metadata"),
    ("[2002:a9fe:a9fe::1]", "cloud metadata"),
    ("[::ffff:0.0.0.0]", "unspecified"),
    # unspecified, multicast, reserved, broadcast
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("[::]", "unspecified"),
    ("[0:0::0]", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("[ff02::1]", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
]
LEGACY_SPELLINGS = [
    # legacy numeric spellings of the metadata address
    ("2852039166", "stands for 169.254.169.254"),
    ("0xa9fea9fe", "stands for 169.254.169.254"),
    ("0XA9FEA9FE", "stands for 169.254.169.254"),
    ("0251.0376.0251.0376", "stands for 169.254.169.254"),
    ("0xa9.0xfe.0xa9.0xfe", "stands for 169.254.169.254"),
    ("169.254.43518", "stands for 169.254.169.254"),
    ("169.16689662", "stands for 169.254.169.254"),
    ("0251.254.169.254", "stands for 169.254.169.254"),
    ("169.254.169.254.", "stands for 169.254.169.254"),
    ("0", "stands for 0.0.0.0"),
    ("0x0", "stands for 0.0.0.0"),
    # legacy spellings of allowed addresses are still refused, as ambiguous
    ("127.1", "ambiguous spelling of 127.0.0.1; write it as 127.0.0.1"),
    ("2130706433", "ambiguous spelling of 127.0.0.1"),
    ("010.0.0.1", "ambiguous spelling of 8.0.0.1"),
    ("10.0.0.1.", "ambiguous spelling of 10.0.0.1"),
    # numbers no resolver would read as an address
    ("08.1.1.1", "is not a valid IPv4 address"),
    ("1.2.3.4.5", "is not a valid IPv4 address"),
    ("256.1.1.1", "is not a valid IPv4 address"),
    ("4294967296", "is not a valid IPv4 address"),
    ("%31%36%39.254.169.254", "is not a valid IPv4 address"),
]
HOSTILE_HOSTS = ALWAYS_REFUSED_HOSTS + LEGACY_SPELLINGS


@pytest.mark.parametrize(("host", "reason"), HOSTILE_HOSTS)
def test_validate_backend_url_refuses_hostile_hosts(host: str, reason: str) -> None:
    with pytest.raises(CallbackUrlError) as caught:
        validate_backend_url(f"http://{host}/hooks")

    assert reason in str(caught.value)


@pytest.mark.parametrize(("host", "reason"), ALWAYS_REFUSED_HOSTS)
def test_allowed_networks_cannot_admit_always_refused_hosts(
    host: str, reason: str
) -> None:
    everything = ["0.0.0.0/0", "::/0"]

    with pytest.raises(CallbackUrlError, match=reason):
        validate_backend_url(f"https://{host}:8443/", everything)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://10.1.2.3/", True),
        ("http://10.255.0.1:81/", True),
        ("http://[::ffff:10.1.2.3]/", True),
        ("http://[fd12::1]/", True),
        ("http://11.0.0.1/", False),
        ("http://127.0.0.1/", False),
        ("http://192.168.1.1/", False),
        ("http://[::1]/", False),
        ("http://[fd13::1]/", False),
        # hostnames are judged when they resolve, not when saved
        ("http://backend.internal/", True),
    ],
)
def test_allowed_networks_restrict_ip_literal_hosts(url: str, allowed: bool) -> None:
    networks = ["10.0.0.0/8", "fd12::/16"]

    if allowed:
        assert validate_backend_url(url, networks) == url
    else:
        with pytest.raises(CallbackUrlError, match="outside the allowed networks"):
            validate_backend_url(url, networks)


# check_address


@pytest.mark.parametrize(
    "ip", ["10.0.0.1", "172.31.255.254", "192.168.0.1", "127.0.0.1", "::1", "fd12::7"]
)
def test_check_address_allows_private_addresses_by_default(ip: str) -> None:
    check_address(ip)


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("169.254.169.254", "cloud metadata addresses are always refused"),
        ("fe80::1%eth0", "link-local addresses are always refused"),
        ("::ffff:169.254.169.254", "cloud metadata addresses are always refused"),
        ("fd00:ec2::254", "cloud metadata addresses are always refused"),
        ("100.100.100.200", "cloud metadata addresses are always refused"),
        ("0.0.0.0", "unspecified addresses are always refused"),
        ("::", "unspecified addresses are always refused"),
        ("224.0.0.251", "multicast addresses are always refused"),
        ("ff05::2", "multicast addresses are always refused"),
    ],
)
def test_check_address_refuses_with_the_reason(ip: str, reason: str) -> None:
    with pytest.raises(CallbackUrlError) as caught:
        check_address(ip)

    assert str(caught.value) == f"address {ip} is not allowed: {reason}"


def test_check_address_applies_allowed_networks() -> None:
    check_address("10.20.30.40", ["10.0.0.0/8"])

    with pytest.raises(CallbackUrlError) as caught:
        check_address("192.168.1.1", ["10.0.0.0/8", "fd00::/8"])

    assert str(caught.value) == (
        "address 192.168.1.1 is not allowed: it is outside the allowed networks "
        "(10.0.0.0/8, fd00::/8)"
    )


@pytest.mark.parametrize("ip", ["backend", "2852039166", "169.254.169.254:80", ""])
def test_check_address_refuses_what_is_not_an_address(ip: str) -> None:
    with pytest.raises(CallbackUrlError, match="is not an IP address"):
        check_address(ip)


def test_parse_networks_names_a_bad_entry() -> None:
    assert [str(n) for n in parse_networks(["10.0.0.0/8", "fd00::/8"])] == [
        "10.0.0.0/8",
        "fd00::/8",
    ]

    with pytest.raises(ValueError, match=re.escape("invalid network '10.0.0.1/8'")):
        parse_networks(["10.0.0.0/8", "10.0.0.1/8"])
    with pytest.raises(ValueError, match="invalid network 'intranet'"):
        validate_backend_url("http://backend/", ["intranet"])


def test_callback_url_errors_belong_to_the_package_tree() -> None:
    assert issubclass(CallbackUrlError, ManagerError)
    assert issubclass(AddressNotAllowedError, CallbackUrlError)
    assert issubclass(AddressNotAllowedError, OSError)


# GuardedResolver, against a real aiohttp server on 127.0.0.1


class StaticResolver(AbstractResolver):
    """Resolves made-up host names from a table, as a rebinding DNS would."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.closed = False

    async def resolve(
        self,
        host: str,
        port: int = 0,
        family: socket.AddressFamily = socket.AF_INET,
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        self.closed = True


TABLE = {
    "backend.test": ["127.0.0.1"],
    "rebound.test": ["169.254.169.254"],
    "mixed.test": ["169.254.169.254", "127.0.0.1"],
    "link-local.test": ["fe80::1%lo", "::ffff:169.254.169.254"],
}


@pytest.fixture
async def backend() -> AsyncIterator[tuple[int, list[str]]]:
    """A real HTTP server on 127.0.0.1 recording the paths it was asked for."""
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{name}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, received
    finally:
        await runner.cleanup()


async def post(resolver: GuardedResolver, url: str) -> str:
    connector = aiohttp.TCPConnector(resolver=resolver)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, data=b"{}") as response,
    ):
        return await response.text()


@pytest.mark.parametrize("host", ["backend.test", "mixed.test"])
async def test_allowed_resolution_reaches_the_backend(
    backend: tuple[int, list[str]], host: str
) -> None:
    port, received = backend

    text = await post(
        GuardedResolver(StaticResolver(TABLE)), f"http://{host}:{port}/run"
    )

    assert text == "ok"
    assert received == ["/run"]


@pytest.mark.parametrize("host", ["rebound.test", "link-local.test"])
async def test_rebinding_to_a_refused_address_never_connects(
    backend: tuple[int, list[str]], host: str
) -> None:
    port, received = backend

    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await post(GuardedResolver(StaticResolver(TABLE)), f"http://{host}:{port}/run")

    assert isinstance(caught.value.os_error, AddressNotAllowedError)
    assert f"callback host {host} resolves only to refused addresses" in str(
        caught.value
    )
    assert received == []


async def test_allowed_networks_apply_at_connect_time(
    backend: tuple[int, list[str]],
) -> None:
    port, received = backend
    resolver = GuardedResolver(StaticResolver(TABLE), allowed_networks=["10.0.0.0/8"])

    with pytest.raises(aiohttp.ClientConnectorError, match=re.escape("127.0.0.1")):
        await post(resolver, f"http://backend.test:{port}/run")

    assert received == []


async def test_resolver_drops_only_refused_addresses_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolver = GuardedResolver(StaticResolver(TABLE))

    with caplog.at_level(logging.WARNING, logger="manager.callback_urls"):
        results = await resolver.resolve("mixed.test", 443)

    assert [(r["host"], r["port"]) for r in results] == [("127.0.0.1", 443)]
    assert [record.getMessage() for record in caplog.records] == [
        "callback address refused"
    ]
    record: Any = caplog.records[0]
    assert record.addresses == ["169.254.169.254"]


async def test_resolver_passes_inner_errors_through_and_closes_inner() -> None:
    inner = StaticResolver(TABLE)
    resolver = GuardedResolver(inner)

    with pytest.raises(OSError, match=re.escape("unknown host nowhere.test")):
        await resolver.resolve("nowhere.test")
    await resolver.close()

    assert inner.closed


async def test_default_inner_resolver_guards_real_lookups() -> None:
    resolver = GuardedResolver()

    try:
        results = await resolver.resolve("127.0.0.1", 80)
        with pytest.raises(AddressNotAllowedError, match=re.escape("169.254.169.254")):
            await resolver.resolve("169.254.169.254", 80)
    finally:
        await resolver.close()

    assert [r["host"] for r in results] == ["127.0.0.1"]
