"""What the assets show in the Dagster UI: the failed-images table stays bounded and shows a server's text as
text."""
from __future__ import annotations

from datetime import datetime

from imgpipe.defs.metadata import MAX_LISTED_FAILURES, failures_table
from imgpipe.status.models import ImageRow


def failed(position: int, error: str, url: str = "https://img.example/a.jpg") -> ImageRow:
    return ImageRow(request_id="r1", serial="1", position=position, row_number=1, input_url=url, status="failed",
                    updated_at=datetime(2026, 12, 1), error=error)


def test_a_servers_text_cannot_add_links_html_or_cells_to_the_table():
    table = failures_table([failed(1, "HTTP 500 [login](https://evil.example) <script>x</script> | 2 | 3\nrow",
                                   url="https://img.example/a|b.jpg")])
    [header, rule, row] = table.strip().split("\n")
    assert row.count(" | ") == 3  # row, position, URL, reason: no cell added by the text
    assert "](" not in row.replace("\\]", "") and "<script>" not in row and "\\[login\\]" in row


def test_the_table_of_a_huge_request_stays_bounded_and_says_what_it_left_out():
    table = failures_table([failed(position, "HTTP 404") for position in range(1, 5001)])
    rows = [line for line in table.split("\n") if line.startswith("| 1 |")]
    assert len(rows) == MAX_LISTED_FAILURES
    assert f"…and {5000 - MAX_LISTED_FAILURES} more failed images" in table
    assert failures_table([]) == "none"
