"""What a request's materializations and the output CSV's checks record, the same whichever run processed it:
the request's own run (its partition of the asset job) or a run of several (`process_requests_job`)."""
import pandas as pd
from dagster import MetadataValue

from imgpipe.output.completion import Completion
from imgpipe.output.output_csv import alignment_problems
from imgpipe.report_links import lasting_report_url
from imgpipe.status.models import ImageRow, ImageStatus, Obtained
from imgpipe.status.store import StatusStore
from imgpipe.text import markdown_text

# The failed-images table in the asset metadata: enough to see a pattern, bounded for a request of 20,000.
MAX_LISTED_FAILURES = 50


def output_checks(manifest: pd.DataFrame, completion: Completion) -> list[tuple[str, bool, dict]]:
    """(check name, passed, metadata) of the output CSV's two checks."""
    misaligned = alignment_problems(manifest, completion.csv_bytes)
    larger = [i for i in completion.images if i.status is ImageStatus.COMPRESSED and i.bytes_out > i.bytes_in]
    return [
        ("aligned_with_input", not misaligned, {"problems": markdown_list(misaligned)}),
        ("outputs_not_larger", not larger, {"larger_images": markdown_list(
            f"row {i.row_number} position {i.position}: {i.bytes_in} -> {i.bytes_out} bytes" for i in larger)}),
    ]


def webhook_metadata(store: StatusStore, request_id: str) -> dict:
    attempts = store.webhook_deliveries(request_id)
    table = "| webhook-id | attempt | at | HTTP status | error |\n|---|---|---|---|---|\n" + "".join(
        f"| {a.webhook_id} | {a.attempt} | {a.attempted_at:%Y-%m-%d %H:%M:%S} | {a.status_code or ''} "
        f"| {markdown_text(a.error or '')} |\n" for a in attempts)
    return {
        "attempts": len(attempts),
        "delivered": any(a.status_code is not None and 200 <= a.status_code < 300 for a in attempts),
        "attempt_log": MetadataValue.md(table if attempts else "no webhook URL: nothing to send"),
    }


def request_metadata(completion: Completion) -> dict:
    done = [i for i in completion.images if i.status is ImageStatus.COMPRESSED]
    bytes_in = sum(i.bytes_in or 0 for i in done)
    bytes_out = sum(i.bytes_out or 0 for i in done)
    failed = [i for i in completion.images if i.status is not ImageStatus.COMPRESSED]
    by_way = {str(way): sum(1 for i in done if i.obtained == way) for way in Obtained}
    return {
        "status": str(completion.status),
        **{f"images_{k}": v for k, v in completion.counts.items()},
        **{f"obtained_{way}": count for way, count in by_way.items()},
        # A 304 sent no body: the bytes of the input it stood for were not downloaded again.
        "bytes_not_downloaded": sum(i.bytes_in or 0 for i in done if i.obtained == Obtained.NOT_MODIFIED),
        "kept_inputs": sum(1 for i in done if i.note),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "percent_saved": round(100 * (1 - bytes_out / bytes_in), 1) if bytes_in else 0.0,
        **rendition_metadata(completion.renditions),
        "output_csv_path": MetadataValue.path(completion.output_csv.path),
        "output_csv_url": MetadataValue.url(completion.output_csv.url),
        "report_url": MetadataValue.url(lasting_report_url(completion.output_csv.url)),
        "failed_images": MetadataValue.md(failures_table(failed)),
    }


def rendition_metadata(totals: dict[str, tuple[int, int, int]]) -> dict:
    """Per kind of rendition (`fallback_jpeg`, `webp`, `avif`): files and bytes, and for WebP and AVIF the bytes
    and percent they save against the JPEG (or main output) of the same width. Nothing without renditions."""
    metadata = {}
    for kind, (files, size, saved) in sorted(totals.items()):
        role, format = kind.split(" ")
        name = format if role == "alternative" else f"{role}_{format}"
        metadata |= {f"renditions_{name}_files": files, f"renditions_{name}_bytes": size}
        if role == "alternative":
            metadata |= {f"renditions_{name}_bytes_saved": saved,
                         f"renditions_{name}_percent_saved": round(100 * saved / (size + saved), 1) if size else 0.0}
    return metadata


def failures_table(failed: list[ImageRow]) -> str:
    if not failed:
        return "none"
    table = "| row | position | URL | reason |\n|---|---|---|---|\n" + "".join(
        f"| {i.row_number} | {i.position} | {markdown_text(i.input_url[:80])} "
        f"| {markdown_text((i.error or i.status)[:120])} |\n" for i in failed[:MAX_LISTED_FAILURES])
    if len(failed) > MAX_LISTED_FAILURES:
        table += f"\n…and {len(failed) - MAX_LISTED_FAILURES} more failed images (see the status API)\n"
    return table


def markdown_list(lines) -> MetadataValue:
    items = [f"- {markdown_text(line)}" for line in lines]
    return MetadataValue.md("\n".join(items) or "none")
