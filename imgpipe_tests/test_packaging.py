"""`pip install .` outside the checkout, then `imgpipe up`: the wheel holds every file `imgpipe up` and
`imgpipe worker` read beside the code (imgpipe/package_data/, the report's template), and the installed package
finds them in itself through importlib.resources, not in the checkout.

The wheel is built as `pip install .` builds it, in pip's isolated build environment (the project's venv has no
`wheel` package, and its setuptools is older than pyproject.toml asks for), from a copy of the sources: a build
in the checkout would reuse, and leave behind, its `build/lib` and `imgpipe.egg-info`."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = ROOT / "imgpipe" / "package_data"
SAMPLE_CSV = PACKAGE_DATA / "samples" / "products.csv"


def sample_image_names() -> list[str]:
    """The images the sample CSV names, as the sample server must answer them."""
    rows = csv.DictReader(io.StringIO(SAMPLE_CSV.read_text()))
    return sorted({urlsplit(url.strip()).path.lstrip("/") for row in rows
                   for url in row["Input Image Urls"].split(",")})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "imgpipe", source / "imgpipe", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                            "-w", str(work / "dist"), str(source)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = (work / "dist").glob("imgpipe-*.whl")
    return found


def test_the_wheel_holds_every_file_imgpipe_up_reads_beside_the_code(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(path.relative_to(ROOT).as_posix() for path in PACKAGE_DATA.rglob("*") if path.is_file())
    assert [name for name in shipped if name not in names] == []
    needed = ["imgpipe/package_data/dagster.yaml", "imgpipe/package_data/distributed/dagster.yaml",
              "imgpipe/package_data/samples/products.csv", "imgpipe/templates/report.html",
              *(f"imgpipe/package_data/samples/images/{name}" for name in sample_image_names())]
    assert [name for name in needed if name not in names] == []
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "imgpipe = imgpipe.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# Run in the installed package, in a folder outside the checkout: what `imgpipe up` reads before it starts its
# children (the instance's dagster.yaml, the sample CSV), what it serves (the sample images, over HTTP), and what
# `imgpipe worker` checks without a DAGSTER_HOME (the distributed dagster.yaml's variables).
INSTALLED_CHECK = """
import json, sys, urllib.request
from importlib import resources
from pathlib import Path

import imgpipe
from imgpipe import instance, local_stack

names, home = json.loads(sys.argv[1]), Path(sys.argv[2])
local_stack.prepare_dagster_home(home)
with resources.as_file(local_stack.SAMPLES / "images") as images:
    server = local_stack.serve_samples(0, images)
    port = server.server_address[1]
    served = {name: len(urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}", timeout=10).read())
              for name in names}
    server.shutdown()
print(json.dumps({
    "package": imgpipe.__file__,
    "found": [str(local_stack.INSTANCE_CONFIG), str(local_stack.SAMPLES), str(images),
              str(instance.SHIPPED_CONFIG)],
    "dagster_yaml": (home / "dagster.yaml").read_text(),
    "sample_csv": local_stack.sample_csv(18123).decode(),
    "served": served,
    "worker_variables": instance.file_variables(instance.SHIPPED_CONFIG),
}))
"""


def test_the_installed_package_finds_its_files_in_itself_not_in_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs as it is unpacked
    names = sample_image_names()
    # PYTHONPATH comes before the venv's site-packages, and the editable install's finder after every path entry.
    ran = subprocess.run([sys.executable, "-c", INSTALLED_CHECK, json.dumps(names), str(tmp_path / "dagster_home")],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout.splitlines()[-1])

    assert Path(seen["package"]).is_relative_to(site), seen["package"]
    assert [path for path in seen["found"] if not Path(path).is_relative_to(site)] == []
    assert seen["dagster_yaml"] == (PACKAGE_DATA / "dagster.yaml").read_text()
    assert "127.0.0.1:18123/chair-front.jpg" in seen["sample_csv"] and "127.0.0.1:8001" not in seen["sample_csv"]
    assert seen["served"] == {name: (PACKAGE_DATA / "samples" / "images" / name).stat().st_size for name in names}
    assert "IMGPIPE_DATABASE_URL" in seen["worker_variables"]
