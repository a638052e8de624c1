"""The documentation: its generated pages are current, every setting and API call is in it, every page is in the
site's navigation, the README stays a front page, and the build hook draws its charts.

Everything read here is in the repository; the hook's charts are drawn from data made in memory.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from imgpipe import docs_reference
from imgpipe.settings import Limits, Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REGENERATE = "docs are stale: run `.venv/bin/python -m imgpipe.docs_reference` and commit the result"
README_MAX_LINES = 250


def test_the_configuration_page_is_what_the_generator_makes():
    assert (DOCS / "configuration.md").read_text(encoding="utf-8") == docs_reference.configuration_markdown(), \
        REGENERATE


def missing_settings(page: str) -> list[str]:
    """The variables of Settings' fields (the Limits' included) that have no row on `page`."""
    return [env_name(name) for name in Settings.model_fields if f"| `{env_name(name)}` |" not in page]


def test_every_setting_is_on_the_configuration_page_as_its_variable():
    assert set(Limits.model_fields) <= set(Settings.model_fields)
    missing = missing_settings((DOCS / "configuration.md").read_text(encoding="utf-8"))
    assert not missing, f"settings missing from docs/configuration.md: {missing}; {REGENERATE}"


def test_a_page_without_a_setting_is_caught():
    page = docs_reference.configuration_markdown()
    rows = [line for line in page.splitlines() if line.startswith(("| `IMGPIPE_WIDTHS` |", "| `IMGPIPE_MAX_PIXELS` |"))]
    stale = "\n".join(line for line in page.splitlines() if line not in rows)
    assert missing_settings(stale) == ["IMGPIPE_MAX_PIXELS", "IMGPIPE_WIDTHS"]


def test_variables_are_named_as_settings_reads_them():
    assert env_name("max_pixels") == "IMGPIPE_MAX_PIXELS"
    assert Settings.from_env({"IMGPIPE_MAX_PIXELS": "7"}).max_pixels == 7
    page = docs_reference.configuration_markdown()
    assert "| `IMGPIPE_MAX_PIXELS` | int | `50000000` |" in page


def test_secrets_show_no_default_value():
    page = docs_reference.configuration_markdown()
    for name in ("api_token", "webhook_secret", "database_url"):
        row = next(line for line in page.splitlines() if line.startswith(f"| `{env_name(name)}` |"))
        assert row.split(" | ")[2] in ("unset", "(secret, not shown)")


def test_the_openapi_document_is_what_the_app_answers():
    assert (DOCS / "reference" / "openapi.json").read_text(encoding="utf-8") == docs_reference.openapi_json(), \
        REGENERATE


def test_the_api_page_names_every_operation_of_the_document():
    document = json.loads((DOCS / "reference" / "openapi.json").read_text(encoding="utf-8"))
    page = (DOCS / "api.md").read_text(encoding="utf-8")
    assert "(reference/openapi.json)" in page
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert f"| `{operation['operationId']}` | `{method.upper()} {path}` |" in page, (method, path)


def nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_of_the_nav_exists_and_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["theme"]["name"] == "material"
    assert config["site_dir"] == "build/site"
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed))
    missing = [page for page in listed if not (DOCS / page).is_file()]
    assert not missing, f"pages in mkdocs.yml's nav that do not exist: {missing}"
    unlisted = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md") if
                      str(path.relative_to(DOCS)) not in listed)
    assert not unlisted, f"pages missing from mkdocs.yml's nav: {unlisted}"


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_the_readme_links_only_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = {target.split("#")[0] for target in re.findall(r"\]\((docs/[^)]+)\)", readme)}
    assert targets
    assert [target for target in targets if not (ROOT / target).exists()] == []


# ------------------------------------------------------------------------------------------------ the charts hook

@pytest.fixture(scope="module")
def hooks():
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (`make docs` installs it)")
    pytest.importorskip("matplotlib", reason="the docs extra is not installed (`make docs` installs it)")
    spec = importlib.util.spec_from_file_location("imgpipe_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def renditions_result() -> dict:
    """The shape bench/renditions.py writes (JPEG qualities as JSON object keys), with made-up values."""
    widths = ["480", "960", "main"]
    calibration = {str(jpeg_quality): {image_format: {
        width: {"quality": jpeg_quality + 3, "widths": {width: {"bytes_fraction": 0.7 + 0.01 * i,
                                                                "ssimulacra2_difference": 0.4}}}
        for i, width in enumerate(widths)} for image_format in ("WEBP", "AVIF")} for jpeg_quality in (30, 40)}
    calibration["40"]["AVIF"]["480"] = {"quality": None, "widths": {}}
    return json.loads(json.dumps({"when": "2026-01-01T00:00:00+0000", "images_per_quality": 3, "cpus": 2,
                                  "widths": widths, "goals": {"bytes_fraction": {"WEBP": 0.75, "AVIF": 0.6}},
                                  "calibration": calibration}))


def codec_floor_result() -> dict:
    """The shape bench/codec_floor.py writes, with made-up values."""
    isolated = {"caller (pickling, pipes)": 1.0, "fork server": 2.0, "image processes": 20.0, "total": 23.0,
                "minor faults per image": 1400}
    return {"label": "now", "when": "2026-01-01T00:00:00+0000", "cpus": 2, "least_of_rounds_ms": {
        "in process": {"floor: decode + optimised encode at half quality": 10.0, "compress_image": 14.0,
                       "decode": 4.0, "quality estimate": 0.01},
        "process": isolated, "pool": {**isolated, "fork server": 0.5}}}


@pytest.mark.parametrize("name, data", [("renditions", renditions_result()), ("codec_floor", codec_floor_result()),
                                        ("renditions", {"renditions": renditions_result()})])
def test_each_chart_is_drawn_as_svg_that_depends_on_its_data_alone(hooks, name, data):
    svg = hooks.chart_svg(name, data)
    assert b"<svg" in svg[:2000]
    assert svg == hooks.chart_svg(name, data)


def test_a_json_that_is_not_what_its_bench_writes_is_an_error(hooks):
    with pytest.raises((KeyError, ValueError)):
        hooks.chart_svg("renditions", {"something": "else"})
    with pytest.raises(KeyError):
        hooks.chart_svg("codec_floor", {"label": "now"})


def test_a_marker_becomes_the_chart_or_how_to_make_its_data(hooks):
    page = "before\n<!-- chart: renditions -->\n<!-- chart: codec_floor -->\nafter\n"
    drawn = hooks.with_charts(page, "performance.md", {"renditions"})
    assert "![Chart: renditions](charts/renditions.svg)" in drawn
    assert "*(chart: run `.venv/bin/python bench/codec_floor.py`" in drawn and "<!--" not in drawn
    assert "](../charts/renditions.svg)" in hooks.with_charts(page, "reference/page.md", {"renditions"})
    with pytest.raises(Exception, match="unknown chart"):
        hooks.with_charts("<!-- chart: nothing -->\n", "performance.md", set())


def test_the_performance_page_asks_for_every_chart(hooks):
    markers = hooks.MARKER.findall((DOCS / "performance.md").read_text(encoding="utf-8"))
    assert sorted(markers) == sorted(hooks.CHARTS)
