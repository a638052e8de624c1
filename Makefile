# Two commands on a fresh machine: `make run` and `make test`. Each builds its own virtual environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-system-deps services bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The whole stack on the embedded defaults: UI :3000, API :8000, sample images :8001; data in ./data.
run: $(STAMP)
	$(VENV)/bin/imgpipe up

# ImageMagick's `identify` cross-checks the quality estimate and Debian's Chromium runs the browser test;
# both are installed when missing and we may (CI is root).
test-system-deps:
	@command -v identify >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq imagemagick >/dev/null) || echo "note: ImageMagick not installed; its cross-check will be skipped"; }
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "note: Chromium not installed; the browser test (imgpipe_tests/test_ui_browser.py) will be skipped"; }

# The distributed profile's tests use PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379);
# each is started with the Debian packages' own commands when it is installed but not answering.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || { command -v pg_ctlcluster >/dev/null && pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; } || echo "note: PostgreSQL is not running on 127.0.0.1:5432; the distributed tests will fail"
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { command -v redis-server >/dev/null && redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; } || echo "note: Redis is not running on 127.0.0.1:6379; the distributed tests will fail"

test: $(STAMP) test-system-deps services
	$(PY) -m pytest -q -ra

# Throughput against a warm process pool (bench-results/bench.json). BENCH_ARGS=--quick for 50 and 200 images.
bench: $(STAMP)
	$(PY) bench/run_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
