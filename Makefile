# The two commands a person needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: run status test chaos ha lint format check bundle bench-telemetry bench-deployments bench-ui bench-gateway bench-fairshare clean

$(STAMP): pyproject.toml
	@deploy/system-packages.sh build
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/python manage.py serve

# The processes of a running `make run`, from any shell in the checkout; other
# supervisorctl commands: `.venv/bin/python manage.py ctl stop agent` (docs in README.md).
status: $(STAMP)
	@$(BIN)/python manage.py ctl status

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

# The chaos suite (docs/reliability.md): a live stack of its own (PostgreSQL, Redis,
# console, two agents, a deployment, the gateway), each fault injected into it and
# measured; needs root. CHAOS_MODE=full for the issue's lengths (60 s outages).
# Measurements go to .chaos-results.json; the table is printed at the end
# (`python -m tests.chaos.report --write docs/reliability.md` puts it in the docs).
CHAOS_MODE ?= short
chaos: $(STAMP)
	@deploy/system-packages.sh chaos
	HANGAR_CHAOS_MODE=$(CHAOS_MODE) $(BIN)/python -m pytest tests/chaos $(PYTEST_ARGS); \
	  status=$$?; $(BIN)/python -m tests.chaos.report; exit $$status

# The HA proof (docs/ha.md): Patroni with etcd, Redis under Sentinel, failed in turn.
# Patroni runs as `postgres` (PostgreSQL refuses root), so it gets a virtual
# environment of the system's python3 with the `ha` extra of pyproject.toml.
HA_VENV := .ha-venv
$(HA_VENV)/.installed: pyproject.toml
	@deploy/system-packages.sh ha
	@test -x $(HA_VENV)/bin/python || /usr/bin/python3 -m venv $(HA_VENV)
	$(HA_VENV)/bin/python -m pip install --quiet "$$($(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["ha"])')"
	@touch $@

ha: export HANGAR_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/hangar
ha: export HANGAR_DATA_DIR ?= $(CURDIR)/.test-data
ha: export HANGAR_HA_TESTS = 1
ha: $(STAMP) $(HA_VENV)/.installed
	@deploy/system-packages.sh ha
	$(BIN)/python -m pytest tests/ha -s $(PYTEST_ARGS)

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
