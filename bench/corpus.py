"""The benchmark's images and the server that hands them out on 127.0.0.1.

Two corpora of 1632x1224 JPEGs at qualities 40-95, made once and cached under bench-results/:

- `photo`: real photographs shipped in scikit-image's wheel (`skimage.data`: astronaut, chelsea, coffee, the
  Hubble deep field, a micrograph, two motorcycle shots, a retina, a rocket launch), each image a random 4:3
  crop of one of them, maybe mirrored, resized with Lanczos and saved at a spread quality; every other one
  carries a camera's EXIF (make, model, date, exposure, GPS). About 200 KB each (median 150 KB): the shape of
  a shop's product photos. This is the corpus a sceptic measures on.
- `synthetic`: a gradient, a dozen flat shapes and per-pixel noise. Noise makes every decode and encode about
  three times slower than a photograph's, which hides what imgpipe adds per image.

`small` is the photo corpus at 800x600 (500 files), for the 20,000-image request: its URLs are `/small/<n>.jpg`
for any n, served from file n mod 500, so that every URL is an image of its own to imgpipe.
"""
from __future__ import annotations

import email.utils
import functools
import http.server
import json
import multiprocessing
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench-results"
CPUS = os.cpu_count() or 2
WIDTH, HEIGHT = 1632, 1224
SMALL = (800, 600)
SMALL_FILES = 500
# The colour photographs of skimage.data (the grey ones and the drawings are left out).
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
          "motorcycle_right.png", "retina.jpg", "rocket.jpg")
CORPORA = ("photo", "synthetic")


def quality_of(seed: int) -> int:
    return 40 + (seed * 37) % 56  # spread over 40..95


def make_synthetic(path: Path, seed: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    """A gradient, a dozen flat shapes and per-pixel noise."""
    width, height = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    base, slope_x, slope_y = rng.uniform(-128, 255, (3, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(base + slope_x * x + slope_y * y, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, x1 = sorted(rng.integers(0, width, 2))
        y0, y1 = sorted(rng.integers(0, height, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=quality_of(seed))


@functools.cache
def _photo(name: str) -> Image.Image:
    import skimage.data  # the bench extra: `pip install -e '.[bench]'`

    return Image.open(Path(skimage.data.__file__).parent / name).convert("RGB")


def _camera_exif(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0110] = "Canon EOS 80D"  # Model
    exif[0x0131] = "Product shots 1.0"  # Software
    exif[0x0132] = f"2026:11:{1 + seed % 28:02d} 10:{seed % 60:02d}:00"  # DateTime
    exif[0x0112] = 1  # Orientation: upright
    ifd = exif.get_ifd(0x8769)  # Exif IFD
    ifd[0x829A] = 1 / 125  # ExposureTime
    ifd[0x829D] = 5.6  # FNumber
    ifd[0x8827] = 200  # ISO
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 8.0, 30.0)
    gps[3], gps[4] = "E", (11.0, 34.0, 10.0)
    return exif.tobytes()


def make_photo(path: Path, seed: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    """A random 4:3 crop of a real photograph, maybe mirrored, resized; EXIF on every other one."""
    rng = np.random.default_rng(seed)
    source = _photo(PHOTOS[seed % len(PHOTOS)])
    width, height = source.size
    crop_w = min(width, int(height * 4 / 3))
    crop_h = int(crop_w * 3 / 4)
    scale = rng.uniform(0.8, 1.0)
    crop_w, crop_h = int(crop_w * scale), int(crop_h * scale)
    x, y = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    image = source.crop((x, y, x + crop_w, y + crop_h)).resize(size, Image.LANCZOS)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    extra = {"exif": _camera_exif(seed)} if seed % 2 else {}
    image.save(path, "JPEG", quality=quality_of(seed), **extra)


MAKERS = {"photo": make_photo, "synthetic": make_synthetic}


def _make(corpus: str, path: Path, seed: int, size: tuple[int, int]) -> None:
    MAKERS[corpus](path, seed, size)


def ensure_images(corpus: str, count: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    """`count` images of `corpus`, made once into bench-results/<corpus>-<w>x<h>-<count>/ (`00000.jpg`...)."""
    folder = RESULTS / f"{corpus}-{size[0]}x{size[1]}-{count}"
    done = folder / ".complete"
    if not done.exists():
        print(f"making {count} {corpus} images of {size[0]}x{size[1]} in {folder} (once)", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        with multiprocessing.get_context("fork").Pool(CPUS) as pool:
            pool.starmap(_make, [(corpus, folder / f"{i:05d}.jpg", i, size) for i in range(count)], chunksize=8)
        done.touch()
    return folder


def corpus_stats(folder: Path) -> dict:
    sizes = sorted(p.stat().st_size for p in folder.glob("*.jpg"))
    return {"files": len(sizes), "mean_kb": round(sum(sizes) / len(sizes) / 1000),
            "median_kb": round(sizes[len(sizes) // 2] / 1000)}


class ImageServer:
    """Image folders over HTTP on 127.0.0.1, from a process of its own (a thread of the bench's process would share
    its GIL with the bench's sampling and polling, and answer later than any real image server would).

    `/<name>/<file>` is `folders[name]/<file>`; `/<name>/<tag>/<file>` is the same image with a JPEG comment
    naming the tag inserted after its first marker: the same pixels (imgpipe drops comments) but bytes of their
    own, so that a run's images are new to imgpipe by URL and by content (no reuse of another run's outputs
    whichever way it looks). A folder in `cycled` serves `/<name>/<n>.jpg` for any n from its file n mod its
    count, each with a comment naming n. ETag and Last-Modified, If-None-Match and If-Modified-Since (304) as a static
    file server."""

    def __init__(self, folders: dict[str, Path], cycled: dict[str, int] | None = None):
        self.folders = {name: str(folder) for name, folder in folders.items()}
        self.cycled = dict(cycled or {})
        self.base = ""
        self._process: subprocess.Popen | None = None

    def urls(self, name: str, count: int, start: int = 0, tag: str | None = None) -> list[str]:
        """`count` image URLs of folder `name` from file `start` on; with `tag`, bytes of their own (see above)."""
        middle = f"/{tag}" if tag else ""
        return [f"{self.base}/{name}{middle}/{i:05d}.jpg" for i in range(start, start + count)]

    def __enter__(self) -> "ImageServer":
        self._process = subprocess.Popen([sys.executable, __file__, json.dumps(self.folders), json.dumps(self.cycled)],
                                         stdout=subprocess.PIPE, text=True)
        self.base = self._process.stdout.readline().strip()
        if not self.base:
            raise RuntimeError("the image server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._process.kill()
        self._process.wait()


def serve(folders: dict[str, str], cycled: dict[str, int]) -> None:
    """ImageServer's process: prints its base URL, then serves until killed."""
    folders = {name: Path(folder) for name, folder in folders.items()}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            found = _resolve(parts, folders, cycled)
            if found is None:
                self.send_error(404)
                return
            path, tag = found
            stat = path.stat()
            modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
            # As nginx makes them (time and size), and the tag too: a tagged copy's bytes are its own.
            etag = f'"{int(stat.st_mtime):x}-{stat.st_size:x}-{zlib.crc32((tag or "").encode()):x}"'
            if self.headers.get("If-None-Match") == etag or (
                    "If-None-Match" not in self.headers and self.headers.get("If-Modified-Since") == modified):
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", modified)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            if tag:
                comment = f"imgpipe bench {tag}".encode()
                data = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    print(f"http://127.0.0.1:{httpd.server_address[1]}", flush=True)
    httpd.serve_forever()


def _resolve(parts: list[str], folders: dict[str, Path], cycled: dict[str, int]) -> tuple[Path, str | None] | None:
    if len(parts) not in (2, 3) or parts[0] not in folders:
        return None
    name, tag = parts[-1], (parts[1] if len(parts) == 3 else None)
    if not name.endswith(".jpg") or not name[:-4].isdigit():
        return None
    number = int(name[:-4])
    if parts[0] in cycled:
        tag = f"{tag or ''}#{number}"
        number %= cycled[parts[0]]
    path = folders[parts[0]] / f"{number:05d}.jpg"
    return (path, tag) if path.is_file() else None


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]), json.loads(sys.argv[2]))
