# The two commands a person needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: run test lint format check bundle bench-telemetry bench-deployments bench-ui bench-gateway bench-fairshare clean

$(STAMP): pyproject.toml
	@deploy/system-packages.sh build
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/python manage.py serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: $(STAMP)
	$(BIN)/python manage.py check --fail-level WARNING
	HANGAR_DATABASE_URL=sqlite:///:memory: $(BIN)/python manage.py makemigrations --check --dry-run
	HANGAR_SECRET_KEY=$$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=') HANGAR_HTTPS=true \
	  HANGAR_ALLOWED_HOSTS=hangar.example.org HANGAR_REDIS_URL=redis://hangar:example@127.0.0.1:6379/0 \
	  $(BIN)/python manage.py check --deploy --fail-level WARNING

test: export HANGAR_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/hangar
test: export HANGAR_DATA_DIR ?= $(CURDIR)/.test-data
test: lint check
	@deploy/system-packages.sh test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench-telemetry: $(STAMP)
	$(BIN)/python -m tests.bench.telemetry

bench-deployments: $(STAMP)
	$(BIN)/python -m tests.bench.deployments

bench-ui: $(STAMP)
	$(BIN)/python -m tests.bench.ui

bench-gateway: $(STAMP)
	$(BIN)/python -m tests.bench.gateway

bench-fairshare: $(STAMP)
	$(BIN)/python -m tests.bench.fairshare

# One archive for an offline appliance (docs/install.md); WITH_DEBS=1 carries the
# Debian packages too. Written to dist/.
bundle:
	deploy/bundle/build.sh $(if $(WITH_DEBS),--with-debs)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
