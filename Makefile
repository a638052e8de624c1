# Two commands on a fresh machine: `make run` and `make test`. Each builds its own virtual environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-system-deps services bench docs clean

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

# The distributed profile's tests use PostgreSQL (127.0.0.1:5432, user postgres, trust), Redis (127.0.0.1:6379)
# and RabbitMQ (127.0.0.1:5672, guest/guest). Each one not answering is started with its Debian package's own
# command, and first installed from Debian's packages where it is missing and we are root (CI); not root, its
# tests are skipped, saying `sudo make services`. Silent where all three answer (deploy/test-services.sh).
services:
	@bash deploy/test-services.sh

# Two pytests side by side, as most of these tests wait on other processes: the slow ones that stand up whole stacks
# (test_restart.py: stacks started, killed and started again; test_distributed.py: Celery workers, PostgreSQL, S3;
# test_e2e.py: the daemon, the folder and the API end to end; about 16 minutes together on 2 cores, as long as the
# rest beside them) in the background, with folders of their own, and the rest in the foreground; the
# background's output follows the rest's. The exit status is the rest's if it failed, else the background's.
# Interrupted (Ctrl-C, kill), the background pytest is stopped with SIGINT and waited for
# (imgpipe_tests/conftest.py has it heed SIGINT, which a background job ignores); its log and folder go in any case.
SLOW_TESTS := imgpipe_tests/test_restart.py imgpipe_tests/test_distributed.py imgpipe_tests/test_e2e.py
test: $(STAMP) test-system-deps services
	@slow= slow_log= slow_tmp=; \
	trap 'rm -rf $$slow_log $$slow_tmp' EXIT; \
	trap 'trap - INT TERM; [ -z "$$slow" ] || { kill -INT $$slow 2>/dev/null; wait $$slow; }; exit 130' INT TERM; \
	slow_log=$$(mktemp) && slow_tmp=$$(mktemp -d) || exit 1; \
	$(PY) -m pytest -q -ra -p no:cacheprovider --basetemp=$$slow_tmp $(SLOW_TESTS) >$$slow_log 2>&1 & slow=$$!; \
	$(PY) -m pytest -q -ra $(addprefix --ignore=,$(SLOW_TESTS)); rest=$$?; \
	wait $$slow; slow_status=$$?; echo "== $(SLOW_TESTS)"; cat $$slow_log; \
	[ $$rest -ne 0 ] && exit $$rest; exit $$slow_status

# Throughput and CPU per image against a warm process pool doing only the codec's work (download, decode, encode at
# half quality), on photographs (scikit-image's, the `bench` extra) and synthetic images, under both
# IMGPIPE_ISOLATION modes (bench-results/bench.json). BENCH_ARGS=--quick for 50 and 200 images;
# BENCH_ARGS=--huge adds requests of 2,000 and 20,000 images with the status API polled (bench-results/huge.json).
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP) setup.cfg
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/run_bench.py $(BENCH_ARGS)

# The documentation site (mkdocs.yml, docs/) into build/site, with the `docs` extra (MkDocs, Material, matplotlib for
# the charts docs/hooks.py draws from docs/data/). Strict: a broken link or a page missing from the nav fails it.
# docs/configuration.md and docs/reference/openapi.json are generated: `.venv/bin/python -m imgpipe.docs_reference`.
DOCS_STAMP := $(VENV)/.docs-stamp
$(DOCS_STAMP): $(STAMP) setup.cfg
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[docs]'
	touch $(DOCS_STAMP)

# NO_MKDOCS_2_WARNING: Material for MkDocs (9.7 on) prints a banner about its end of life and MkDocs 2.0 on stderr;
# it is no build warning (strict passes with it), only noise in CI's log.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info
