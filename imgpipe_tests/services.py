"""The servers the distributed profile's tests talk to: PostgreSQL, Redis and RabbitMQ on 127.0.0.1.

`make test` (`make services`) starts them where Debian's packages are installed, and as root (CI) installs them
where they are missing. So a test that finds one not answering fails as root, where that is a broken machine,
and is skipped otherwise, with the one command that installs and starts it; every other test still runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NoReturn

import pytest


@dataclass(frozen=True)
class Service:
    name: str
    address: str
    package: str


POSTGRESQL = Service("PostgreSQL", "127.0.0.1:5432 (user postgres, trust authentication)", "postgresql")
REDIS = Service("Redis", "127.0.0.1:6379", "redis-server")
RABBITMQ = Service("RabbitMQ", "127.0.0.1:5672 (guest/guest)", "rabbitmq-server")
SETUP_COMMAND = "sudo make services"


class ServiceUnavailable(RuntimeError):
    """A service the distributed tests need is not answering on a machine that should have it (root: CI)."""


def unavailable(service: Service, detail: str, error: type[ServiceUnavailable] = ServiceUnavailable) -> NoReturn:
    """Skip the test (not root), or raise `error` (root), saying how to get the service."""
    message = (f"{service.name} is not answering on {service.address} ({detail}); `{SETUP_COMMAND}` installs "
               f"Debian's {service.package} where it is missing and starts it")
    if os.geteuid() == 0:
        raise error(message)
    pytest.skip(message)
