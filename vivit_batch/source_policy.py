"""Which addresses http(s) sources may reach: public ones, and the hosts the configuration lists.

A manifest is untrusted. Were its URLs fetched as given, an entry (or a redirect from an
innocent-looking host) could reach cloud metadata endpoints, cluster services or loopback, and
the size, ETag and error code that land in its row would map which of them answer. So every
connection of an http(s) source is checked after its host is resolved and before it is opened,
redirects included (aiohttp opens each redirect's connection through the same connector):
loopback, link-local (cloud metadata: 169.254.169.254, fd00:ec2::254), private, unique-local,
and every other address that is not globally routable are refused unless their host (or
host:port) is in `manifest.http_allow_hosts`. Checking the resolved addresses, not the names,
also defeats names that resolve to internal addresses (DNS rebinding included: the addresses
checked are the ones connected to).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

import aiohttp

from vivit_batch.errors import SourceRefused

ALLOW_HOSTS_KEY = "manifest.http_allow_hosts"


def parse_allow_hosts(hosts: Iterable[str]) -> frozenset[str]:
    """['10.0.0.5', ' CDN.internal:8080'] -> {'10.0.0.5', 'cdn.internal:8080'}."""
    return frozenset(entry.strip().lower() for entry in hosts if entry.strip())


def refusal(host: str, address: str, port: int, allowed: frozenset[str]) -> str | None:
    """Why connecting to `address` (which `host` resolved to) on `port` is refused, or None."""
    host = host.lower().strip("[]")
    if {host, f"{host}:{port}", address, f"{address}:{port}"} & allowed:
        return None
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope (%eth0) aside
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_global and not (ip.is_multicast or ip.is_reserved):
        return None
    kind = (
        "a loopback"
        if ip.is_loopback
        else "a link-local (cloud metadata)"
        if ip.is_link_local
        else "a private"
        if ip.is_private
        else "a non-public"
    )
    where = host if host == address else f"{host} ({address})"
    return (
        f"{where} is {kind} address: http(s) sources may reach public addresses only, unless "
        f"the host is listed in {ALLOW_HOSTS_KEY} (e.g. {ALLOW_HOSTS_KEY}={host}:{port})"
    )


class GuardedConnector(aiohttp.TCPConnector):
    """A connector that checks each address a host resolves to before connecting to it."""

    def __init__(self, allowed: frozenset[str], **kwargs):
        super().__init__(**kwargs)
        self.allowed = allowed

    async def _resolve_host(self, host, port, traces=None):
        results = await super()._resolve_host(host, port, traces=traces)
        for result in results:
            reason = refusal(host, result["host"], port, self.allowed)
            if reason:
                raise SourceRefused(reason)
        return results


async def guarded_client(
    allowed: frozenset[str], read_timeout_s: float | None = None, **kwargs
) -> aiohttp.ClientSession:
    """fsspec's `get_client` for http(s) sources: an aiohttp session whose connections are
    checked (`GuardedConnector`), and whose reads give up after `read_timeout_s` without a
    byte (no limit on a whole response that keeps coming)."""
    if read_timeout_s is not None:
        kwargs["timeout"] = aiohttp.ClientTimeout(
            total=None, sock_connect=read_timeout_s, sock_read=read_timeout_s
        )
    return aiohttp.ClientSession(connector=GuardedConnector(allowed), **kwargs)


def client_factory(allow_hosts: Iterable[str], read_timeout_s: float | None = None):
    return functools.partial(guarded_client, parse_allow_hosts(allow_hosts), read_timeout_s)
