import ipaddress
import socket

import pytest

from imgpipe.net.url_safety import (AllowList, UnresolvableHost, UnsafeUrl, check_url, is_public_address,
                                    netloc_of)

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


def resolver_for(*addresses: str):
    """A getaddrinfo stand-in answering every name with `addresses`, recording the names asked."""

    def resolve(host, port, family=0, type=0, proto=0, flags=0):
        resolve.asked.append(host)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    resolve.asked = []
    return resolve


def no_dns(*args, **kwargs):
    raise AssertionError("an IP literal must not be resolved")


NOTHING_ALLOWED = AllowList.parse("")


@pytest.mark.parametrize(
    "url, resolver, why",
    [
        ("http://127.0.0.1/", no_dns, "loopback"),
        ("http://127.1/", no_dns, "loopback"),
        ("http://2130706433/", no_dns, "loopback"),
        ("http://0x7f000001/", no_dns, "loopback"),
        ("http://0177.0.0.1/", no_dns, "loopback"),
        ("http://0x7f.0.0.1/", no_dns, "loopback"),
        ("http://127.0.0.1./", no_dns, "loopback"),
        ("http://localhost/", resolver_for("127.0.0.1"), "localhost resolves to 127.0.0.1, a loopback"),
        ("http://[::1]/", no_dns, "loopback"),
        ("http://[::ffff:127.0.0.1]/", no_dns, "IPv6 form of 127.0.0.1, a loopback"),
        ("http://[::ffff:7f00:1]/", no_dns, "IPv6 form of 127.0.0.1, a loopback"),
        ("http://[::127.0.0.1]/", no_dns, "IPv6 form of 127.0.0.1, a loopback"),
        ("http://[2002:7f00:1::]/", no_dns, "IPv6 form of 127.0.0.1, a loopback"),
        ("http://[64:ff9b::7f00:1]/", no_dns, "IPv6 form of 127.0.0.1, a loopback"),
        ("http://[64:ff9b::a9fe:a9fe]/", no_dns, "IPv6 form of 169.254.169.254, a link-local"),
        ("http://[64:ff9b:1::5db8:d822]/", no_dns, "local-use NAT64"),
        ("http://[2001:0:5db8:d822::1]/", no_dns, "Teredo"),
        ("http://169.254.169.254/latest/meta-data/", no_dns, "link-local"),
        ("http://10.0.0.1/", no_dns, "private"),
        ("http://172.31.255.255/", no_dns, "private"),
        ("http://192.168.1.1/", no_dns, "private"),
        ("http://100.64.0.1/", no_dns, "carrier-grade NAT"),
        ("http://0.0.0.0/", no_dns, "unspecified"),
        ("http://0/", no_dns, "unspecified"),
        ("http://[::]/", no_dns, "unspecified"),
        ("http://224.0.0.1/", no_dns, "multicast"),
        ("http://[ff02::1]/", no_dns, "multicast"),
        ("http://255.255.255.255/", no_dns, "broadcast"),
        ("http://240.0.0.1/", no_dns, "reserved"),
        ("http://192.0.2.1/", no_dns, "documentation"),
        ("http://198.18.0.1/", no_dns, "benchmarking"),
        ("http://[fd00::1]/", no_dns, "private"),
        ("http://[fe80::1]/", no_dns, "link-local"),
        ("http://[2001:db8::1]/", no_dns, "documentation"),
        ("http://[100::1]/", no_dns, "reserved"),
        ("http://256.0.0.1/", no_dns, "not a valid IPv4 address"),
        ("ftp://example.com/a.jpg", no_dns, "scheme 'ftp' is not http or https"),
        ("file:///etc/passwd", no_dns, "scheme 'file'"),
        ("gopher://example.com/", no_dns, "scheme 'gopher'"),
        ("http://user:pw@example.com/a.jpg", no_dns, "user info"),
        ("http://user@example.com/a.jpg", no_dns, "user info"),
        ("http:///a.jpg", no_dns, "no host"),
        ("http://example.com:0/", no_dns, "port 0"),
        ("http://example.com:99999/", no_dns, "not a valid URL"),
        ("http://exa mple.com/", no_dns, "not a valid host name"),
        ("http://example.com/" + "a" * 9000, no_dns, "longer than"),
    ],
)
def test_refused_with_reason(url, resolver, why):
    with pytest.raises(UnsafeUrl, match="^blocked: ") as refusal:
        check_url(url, NOTHING_ALLOWED, resolver)
    assert why in str(refusal.value)


@pytest.mark.parametrize(
    "url, ip",
    [
        (f"http://{PUBLIC_V4}/", PUBLIC_V4),
        (f"https://[{PUBLIC_V6}]/", PUBLIC_V6),
        (f"http://[::ffff:{PUBLIC_V4}]/", f"::ffff:{PUBLIC_V4}"),
        ("http://[64:ff9b::5db8:d822]/", "64:ff9b::5db8:d822"),
        ("http://[2002:5db8:d822::1]/", "2002:5db8:d822::1"),
        ("http://1572395042/", PUBLIC_V4),  # decimal spelling of 93.184.216.34
    ],
)
def test_public_ip_literals_pass_without_dns(url, ip):
    assert check_url(url, NOTHING_ALLOWED, no_dns).ip == ipaddress.ip_address(ip)


def test_public_name_resolves_once_and_describes_the_target():
    resolver = resolver_for(PUBLIC_V4)
    target = check_url("https://Images.Example.COM/a/b.jpg?w=1#top", NOTHING_ALLOWED, resolver)
    assert resolver.asked == ["images.example.com"]
    assert target.scheme == "https"
    assert target.host == "images.example.com"
    assert target.port == 443
    assert target.ip == ipaddress.ip_address(PUBLIC_V4)
    assert target.path_and_query == "/a/b.jpg?w=1"
    assert target.url == "https://images.example.com/a/b.jpg?w=1"


def test_explicit_port_default_path_and_ipv6_netloc():
    target = check_url(f"http://[{PUBLIC_V6}]:8080", NOTHING_ALLOWED, no_dns)
    assert (target.port, target.path_and_query) == (8080, "/")
    assert target.netloc == f"[{PUBLIC_V6}]:8080"


def test_unicode_host_is_idna_encoded():
    resolver = resolver_for(PUBLIC_V4)
    target = check_url("http://bücher.example/", NOTHING_ALLOWED, resolver)
    assert target.host == "xn--bcher-kva.example"
    assert resolver.asked == ["xn--bcher-kva.example"]


def test_one_private_address_among_public_ones_refuses_the_host():
    with pytest.raises(UnsafeUrl, match="blocked: cdn.example resolves to 10.1.2.3, a private address"):
        check_url("http://cdn.example/", NOTHING_ALLOWED, resolver_for(PUBLIC_V4, "10.1.2.3"))


def test_first_resolved_address_is_the_one_to_connect_to():
    target = check_url("http://cdn.example/", NOTHING_ALLOWED, resolver_for(PUBLIC_V6, PUBLIC_V4))
    assert target.ip == ipaddress.ip_address(PUBLIC_V6)


def test_unresolvable_host_is_not_a_refusal():
    def failing(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(UnresolvableHost, match="cannot resolve host 'nowhere.example'") as failure:
        check_url("http://nowhere.example/", NOTHING_ALLOWED, failing)
    assert not isinstance(failure.value, UnsafeUrl)
    with pytest.raises(UnresolvableHost):
        check_url("http://empty.example/", NOTHING_ALLOWED, resolver_for())


@pytest.mark.parametrize(
    "allow_text, url, resolved, allowed",
    [
        ("", "http://127.0.0.1/", None, False),
        ("127.0.0.1", "http://127.0.0.1:8080/", None, True),
        ("127.0.0.1:8080", "http://127.0.0.1:8080/", None, True),
        ("127.0.0.1:8080", "http://127.0.0.1:8081/", None, False),
        ("127.0.0.1:80", "http://127.0.0.1/", None, True),
        ("10.0.0.0/8", "http://10.20.30.40/", None, True),
        ("10.0.0.0/8", "http://11.0.0.1/", None, True),  # public anyway
        ("10.0.0.0/8", "http://192.168.0.1/", None, False),
        ("10.0.0.0/8:443", "https://10.9.9.9/", None, True),
        ("10.0.0.0/8:443", "http://10.9.9.9/", None, False),
        ("[::1]:8080", "http://[::1]:8080/", None, True),
        ("[::1]:8080", "http://[::1]:9090/", None, False),
        ("::1", "http://[::1]:9090/", None, True),
        ("fc00::/7", "http://[fd12::1]/", None, True),
        ("MinIO.Local", "http://minio.local:9000/", "10.0.0.5", True),
        ("minio.local:9000", "http://MINIO.local:9000/", "10.0.0.5", True),
        ("minio.local:9000", "http://minio.local:9001/", "10.0.0.5", False),
        ("minio.local", "http://other.local/", "10.0.0.5", False),
        (" minio.local , 127.0.0.1 ,,", "http://127.0.0.1/", None, True),
        ("127.0.0.1", "http://evil.example/", "127.0.0.1", True),  # an IP entry matches the resolved address
        ("127.0.0.1", "http://evil.example/", "127.0.0.2", False),
    ],
)
def test_allow_list(allow_text, url, resolved, allowed):
    allow = AllowList.parse(allow_text)
    resolver = resolver_for(resolved) if resolved else no_dns
    if allowed:
        check_url(url, allow, resolver)
    else:
        with pytest.raises(UnsafeUrl, match="blocked"):
            check_url(url, allow, resolver)


def test_allow_list_does_not_lift_scheme_or_user_info_rules():
    allow = AllowList.parse("127.0.0.1")
    with pytest.raises(UnsafeUrl, match="user info"):
        check_url("http://a:b@127.0.0.1/", allow, no_dns)
    with pytest.raises(UnsafeUrl, match="scheme"):
        check_url("ftp://127.0.0.1/", allow, no_dns)


def test_allows_directly():
    allow = AllowList.parse("Host.Example:8443,192.168.0.0/16")
    loopback = ipaddress.ip_address("127.0.0.1")
    assert allow.allows("host.example", loopback, 8443)
    assert allow.allows("HOST.EXAMPLE", loopback, 8443)
    assert not allow.allows("host.example", loopback, 443)
    assert allow.allows("anything", ipaddress.ip_address("192.168.7.7"), 1)
    assert not allow.allows("anything", ipaddress.ip_address("::ffff:192.168.7.7"), 1)
    assert not AllowList.parse("").allows("host.example", loopback, 8443)


@pytest.mark.parametrize(
    "bad", ["host:http", "10.0.0.1:0", "10.0.0.1:70000", "[::1", "[::1]8080", "a b", "10.0.0.0/33"]
)
def test_allow_list_rejects_malformed_entries(bad):
    with pytest.raises(ValueError, match="IMGPIPE_ALLOW_PRIVATE_HOSTS"):
        AllowList.parse(bad)


@pytest.mark.parametrize(
    "ip, public",
    [
        (PUBLIC_V4, True),
        ("8.8.8.8", True),
        (PUBLIC_V6, True),
        ("::ffff:8.8.8.8", True),
        ("::ffff:10.0.0.1", False),
        ("::ffff:0:10.0.0.1", False),  # IPv4-translated
        ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
        ("2002:0808:0808::1", True),
        ("64:ff9b::808:808", True),
        ("64:ff9b::c0a8:1", False),
        ("100.63.255.255", True),
        ("100.64.0.0", False),
        ("100.127.255.255", False),
        ("100.128.0.0", True),
        ("172.15.255.255", True),
        ("172.16.0.0", False),
        ("172.32.0.0", True),
        ("0.1.2.3", False),
        ("203.0.113.9", False),
    ],
)
def test_is_public_address(ip, public):
    assert is_public_address(ipaddress.ip_address(ip)) is public


@pytest.mark.parametrize("url, netloc", [
    ("http://2130706433/a.jpg", "127.0.0.1"), ("http://0x7f.1:8080/a.jpg", "127.0.0.1:8080"),
    ("https://BÜCHER.example./a.jpg", "xn--bcher-kva.example"), ("https://shop.example:443/a", "shop.example"),
    ("http://[0:0::1]:81/", "[::1]:81"), ("ftp://shop.example/a", ""), ("http:///a", ""),
])
def test_a_url_names_the_host_it_would_be_checked_into_without_resolving_it(url, netloc):
    assert netloc_of(url) == netloc
    if netloc:
        resolve_nothing = lambda *args, **kwargs: [(socket.AF_INET, 0, 0, "", ("93.184.216.34", 0))]  # noqa: E731
        assert check_url(url, AllowList.parse("127.0.0.0/8,::1/128"), resolve_nothing).netloc == netloc
