"""HTTP to checked addresses only, for image downloads, the Launchpad's CSVs and webhook POSTs alike (the network
rules of docs/safety.md#safety).

Each hop is checked by `url_safety.check_url` and its socket goes to the address that check approved (no second
DNS lookup, so no DNS rebinding), while the Host header, TLS SNI and certificate check keep the URL's host name.
`download.fetch` GETs, politely and in attempts; `post.post` makes a webhook's one attempt.
"""
# Judged on PyPI: advocate (last release 2020, unmaintained) and requests-hardened (maintained and pins the IP, but
# never follows redirects, judges only ::ffff: IPv4-in-IPv6, and allows only loopback, not hosts/CIDRs/ports): own code.
