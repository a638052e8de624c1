"""`GET /metrics`: Prometheus' text format, with prometheus-client, derived from the status store at scrape time.

Why from the store and not counted in memory: the work is done by run workers, step processes and Celery
workers on other machines, none of which lives long enough to be scraped; the status store is the one place
that sees all of it. So each scrape runs a handful of aggregate statements (`StatusStore.metrics`: GROUP BY and
FILTER, never row by row) in one transaction, and every API replica answers the same numbers. The client's
multiprocess mode would only cover processes on this machine sharing a folder, and would lose what a killed
worker counted.

What that means for a dashboard: the `_total` series are what the store holds now, so they are gauges (a
request moves from `queued` to `processing`; `imgpipe purge` removes rows), and the histograms count the
compressed images the store holds (one observation per image: its download and its compression time; 0 s of
compression for an image reused from an earlier request). Use them as they are, or with `delta()`.
"""
from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from imgpipe.status.models import ImageStatus, Obtained, RequestStatus, StoreMetrics

# Upper bounds in seconds, for both durations: a download of a few KB from a near host to a slow 60 s image.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WEBHOOK_OUTCOMES = ("delivered", "http_3xx", "http_4xx", "http_5xx", "blocked", "network_error")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class StoreCollector:
    """A prometheus-client collector whose every collection reads the status store (`read` returns
    `StatusStore.metrics(BUCKETS)`)."""

    def __init__(self, read: Callable[[], StoreMetrics]):
        self.read = read

    def describe(self) -> list[Metric]:
        return []  # nothing is read when the collector is registered, only when it is scraped

    def collect(self) -> Iterator[Metric]:
        yield from families(self.read())


def families(found: StoreMetrics) -> Iterator[Metric]:
    yield _by_label("imgpipe_requests_total", "Requests in the status store, by status.", "status",
                    [str(s) for s in RequestStatus], found.requests_by_status)
    yield _by_label("imgpipe_images_total", "Image slots in the status store, by status.", "status",
                    [str(s) for s in ImageStatus], found.images_by_status)
    yield _by_label("imgpipe_images_obtained_total",
                    "Compressed images by how they were obtained: fetched (downloaded and encoded), not_modified "
                    "(the source answered 304, a kept output reused), same_content (bytes matched a kept input).",
                    "obtained", [str(o) for o in Obtained], found.images_by_obtained)
    data = GaugeMetricFamily("imgpipe_image_bytes_total",
                             "Bytes of the compressed images: in (their inputs) and out (what is served).",
                             labels=["direction"])
    data.add_metric(["in"], found.bytes_in)
    data.add_metric(["out"], found.bytes_out)
    yield data
    by_format = GaugeMetricFamily("imgpipe_image_bytes_out_total",
                                  "Bytes served, by kind (main: the compressed images' outputs, as "
                                  "imgpipe_image_bytes_total counts them; rendition: their renditions) and format.",
                                  labels=["kind", "format"])
    for (kind, format), total in sorted(found.bytes_out_by_format.items()):
        by_format.add_metric([kind, format], total)
    yield by_format
    yield _histogram("imgpipe_image_download_seconds",
                     "Seconds from the start of an image to its bytes downloaded (a 304 included), one observation "
                     "per compressed image.", found.buckets, found.download_seconds)
    yield _histogram("imgpipe_image_compress_seconds",
                     "Seconds an image's own process took to decode and encode it (0 when an earlier output was "
                     "reused), one observation per compressed image.", found.buckets, found.compress_seconds)
    yield _by_label("imgpipe_webhook_attempts_total",
                    "Webhook attempts by outcome: delivered (2xx), http_3xx/4xx/5xx, blocked (unsafe URL), "
                    "network_error.", "outcome", list(WEBHOOK_OUTCOMES), found.webhook_attempts)
    age = GaugeMetricFamily("imgpipe_oldest_queued_request_age_seconds",
                            "Seconds the oldest queued request has waited for its run; 0 when none waits.")
    waited = (found.read_at - found.oldest_queued_at).total_seconds() if found.oldest_queued_at else 0.0
    age.add_metric([], max(0.0, waited))
    yield age


def _by_label(name: str, documentation: str, label: str, known: list[str], values: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    # Every known value gets its series, 0 included, so that a dashboard's query has a series from the start.
    for value in known + sorted(set(values) - set(known)):
        family.add_metric([value], values.get(value, 0))
    return family


def _histogram(name: str, documentation: str, bounds: tuple[float, ...],
               observed: tuple[tuple[int, ...], int, float]) -> Metric:
    cumulative, count, total = observed
    buckets = [(_bound(bound), n) for bound, n in zip(bounds, cumulative)] + [("+Inf", count)]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


def _bound(bound: float) -> str:
    return repr(float(bound))


def exposition(read: Callable[[], StoreMetrics]) -> bytes:
    """The text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(read))
    return generate_latest(registry)
