"""Decides whether a user-supplied URL may be fetched (the network rules of docs/safety.md#safety).

Pure logic: the only I/O is one DNS resolution through an injectable resolver. The caller must connect to
`CheckedTarget.ip` and nowhere else; resolving the name again would let a DNS answer that changed in between
(DNS rebinding) reach an address that was never checked.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import idna

from imgpipe.text import ascii_int

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., list]

# Far above any real image or webhook URL; bounds the work a hostile redirect can cause.
MAX_URL_LENGTH = 8192
DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeUrl(ValueError):
    """The URL must not be fetched; the message starts with "blocked:" and says why."""


class UnresolvableHost(OSError):
    """DNS gave no usable address: an ordinary network failure, not a safety refusal."""


# First match wins, so narrower ranges precede the ranges that contain them. Listed explicitly rather than
# taken from `ipaddress.is_global`, whose tables differ between Python patch releases (and call multicast
# "global").
_IPV4_NON_PUBLIC: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("0.0.0.0/32", "the unspecified address"),
        ("0.0.0.0/8", "a 'this network' address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),  # includes the cloud metadata service 169.254.169.254
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)

_IPV6_NON_PUBLIC: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        # The IPv4 address sits at an offset each site chooses, so it cannot be read back out.
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        # Teredo reaches its embedded IPv4 only through a relay, so that address says nothing about the peer.
        ("2001::/32", "a Teredo tunnel address"),
        ("2001::/23", "an IETF protocol address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("fc00::/7", "a private address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)

# Prefixes whose last 32 bits are an IPv4 address the packets really go to: IPv4-compatible, IPv4-mapped,
# IPv4-translated and well-known NAT64.
_IPV4_IN_LOW_BITS = tuple(
    ipaddress.ip_network(net) for net in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")

# One label of an IPv4 address as inet_aton reads it: decimal, octal (leading 0) or hex (0x).
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def _why_not_public(ip: IPAddress) -> str | None:
    """The reason `ip` is not a public address, or None when it is."""
    if ip.version == 4:
        return _first_reason(ip, _IPV4_NON_PUBLIC)
    reason = _first_reason(ip, _IPV6_NON_PUBLIC)
    if reason:
        return reason
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        inner = _why_not_public(embedded)
        return inner and f"an IPv6 form of {embedded}, {inner}"
    if ip not in _GLOBAL_UNICAST:
        return "a reserved address"
    return None


def _first_reason(ip: IPAddress, table: Iterable[tuple[IPNetwork, str]]) -> str | None:
    return next((reason for network, reason in table if ip in network), None)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in network for network in _IPV4_IN_LOW_BITS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True when `ip` is globally routable, judging IPv4 hidden inside IPv6 by that IPv4 address."""
    return _why_not_public(ip) is None


def _normalise_hostname(name: str) -> str:
    """Lowercase ASCII (IDNA) form without the trailing dot, as DNS and the allow-list compare names."""
    name = name.rstrip(".").lower()
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except UnicodeError as exc:  # idna.IDNAError is one
            raise UnsafeUrl(f"blocked: {name!r} is not a valid host name") from exc
    if not _HOSTNAME.fullmatch(name):
        raise UnsafeUrl(f"blocked: {name!r} is not a valid host name")
    return name


def _ip_literal(host: str) -> IPAddress | None:
    """The address a numeric host means, in every spelling that libc and browsers accept, else None."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise UnsafeUrl(f"blocked: {host!r} is not a valid IPv6 address") from exc
    labels = host.rstrip(".").split(".")
    if not all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        return None
    try:
        # inet_aton reads 127.1, 2130706433, 0177.0.0.1 and 0x7f.0.0.1 the way the connection would.
        return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
    except OSError as exc:
        raise UnsafeUrl(f"blocked: {host!r} is not a valid IPv4 address") from exc


@dataclass(frozen=True)
class _AllowEntry:
    pattern: str | IPNetwork  # a normalised host name, or the addresses it allows
    port: int | None

    def matches(self, host: str, ip: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if isinstance(self.pattern, str):
            return self.pattern == host
        return ip in self.pattern


def _parse_port(text: str, entry: str) -> int:
    port = ascii_int(text, max_digits=5)
    if port is None or not 0 < port < 65536:
        raise ValueError(f"IMGPIPE_ALLOW_PRIVATE_HOSTS: bad port in {entry!r}")
    return port


def _parse_allow_entry(entry: str) -> _AllowEntry:
    host, port = entry, None
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"IMGPIPE_ALLOW_PRIVATE_HOSTS: bad entry {entry!r}")
        if rest:
            port = _parse_port(rest[1:], entry)
    elif entry.count(":") == 1:  # more colons: a bare IPv6 address, which cannot carry a port
        host, port_text = entry.split(":")
        port = _parse_port(port_text, entry)
    try:
        return _AllowEntry(ipaddress.ip_network(host, strict=False), port)
    except ValueError:
        pass
    try:
        return _AllowEntry(_normalise_hostname(host), port)
    except UnsafeUrl as exc:
        raise ValueError(f"IMGPIPE_ALLOW_PRIVATE_HOSTS: bad entry {entry!r}") from exc


@dataclass(frozen=True)
class AllowList:
    """Non-public destinations the operator allows (IMGPIPE_ALLOW_PRIVATE_HOSTS)."""

    entries: tuple[_AllowEntry, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "AllowList":
        """Comma list of host names, IPs or CIDRs, each optionally with :port (IPv6 as [::1]:8080)."""
        return cls(tuple(_parse_allow_entry(part.strip()) for part in text.split(",") if part.strip()))

    def allows(self, host: str, ip: IPAddress, port: int) -> bool:
        """Host-name entries match the URL's host (any case); IP and CIDR entries match the resolved address."""
        host = host.rstrip(".").lower()
        return any(entry.matches(host, ip, port) for entry in self.entries)


@dataclass(frozen=True)
class CheckedTarget:
    """Where a checked URL may go. `host` is lowercase ASCII; IP literals are in canonical form."""

    scheme: str
    host: str
    port: int
    ip: IPAddress  # the only address to connect to
    path_and_query: str

    @property
    def netloc(self) -> str:
        """The Host header value: host, bracketed if IPv6, with the port unless it is the scheme's default."""
        return _netloc(self.scheme, self.host, self.port)

    @property
    def url(self) -> str:
        """The URL rebuilt from the checked parts, so nothing parses the original differently afterwards."""
        return f"{self.scheme}://{self.netloc}{self.path_and_query}"


def check_url(url: str, allow: AllowList, resolver: Resolver = socket.getaddrinfo) -> CheckedTarget:
    """Check `url` and resolve its host once; raise UnsafeUrl or UnresolvableHost, else say where to connect."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"blocked: URL is longer than {MAX_URL_LENGTH} characters")
    parts, port = _split(url)
    if "@" in parts.netloc:
        raise UnsafeUrl("blocked: URL has user info")
    if not parts.hostname:
        raise UnsafeUrl("blocked: URL has no host")
    if port == 0:
        raise UnsafeUrl("blocked: port 0 is not a valid port")
    port = port or DEFAULT_PORTS[parts.scheme]

    host, literal = _host(parts.hostname)
    addresses = [literal] if literal is not None else _resolve(host, port, resolver)

    for ip in addresses:
        reason = _why_not_public(ip)
        if reason and not allow.allows(host, ip, port):
            if literal is not None:
                raise UnsafeUrl(f"blocked: {ip} is {reason}")
            raise UnsafeUrl(f"blocked: {host} resolves to {ip}, {reason}")

    path_and_query = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return CheckedTarget(parts.scheme, host, port, addresses[0], path_and_query)


def netloc_of(url: str) -> str:
    """The `CheckedTarget.netloc` that `url` would be checked into, without resolving its host: the key by which a
    step counts its downloads to a host and gives a host up. "" for a URL the check would refuse as it is spelled
    (its fetch fails at once)."""
    try:
        parts, port = _split(url)
        host, _literal = _host(parts.hostname or "")
    except ValueError:  # UnsafeUrl is one
        return ""
    return _netloc(parts.scheme, host, port or DEFAULT_PORTS[parts.scheme])


def _split(url: str) -> tuple[SplitResult, int | None]:
    """`url`'s parts and the port it names (None: none, the scheme's); UnsafeUrl for a URL that does not parse or
    whose scheme is not http or https."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"blocked: not a valid URL ({exc})") from exc
    if parts.scheme not in DEFAULT_PORTS:
        raise UnsafeUrl(f"blocked: scheme {parts.scheme!r} is not http or https")
    return parts, port


def _host(hostname: str) -> tuple[str, IPAddress | None]:
    """The host as the checks compare it (an IP literal in canonical form, else the normalised name), and the
    address it is when it is an IP literal; UnsafeUrl for neither."""
    literal = _ip_literal(hostname)
    return (str(literal), literal) if literal is not None else (_normalise_hostname(hostname), None)


def _netloc(scheme: str, host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return host if DEFAULT_PORTS[scheme] == port else f"{host}:{port}"


def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        answers = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a label too long for DNS
        raise UnresolvableHost(f"cannot resolve host '{host}'") from exc
    addresses = [
        ipaddress.ip_address(sockaddr[0])
        for family, _type, _proto, _canonname, sockaddr in answers
        if family in (socket.AF_INET, socket.AF_INET6)
    ]
    if not addresses:
        raise UnresolvableHost(f"cannot resolve host '{host}'")
    return addresses
