# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/crm
# Test processes (pytest-xdist): most tests wait on servers and browsers, so two run well on 2 cores.
TEST_WORKERS ?= 2

.PHONY: run test venv lint check bench-sync bench-inbox bench-scale clean

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

venv: $(BIN)/.installed

## make run: SQLite + embedded broker (unless DATABASE_URL / CELERY_BROKER_URL are set), demo data,
## then web + Celery worker + beat + the IDLE watcher in one terminal. Ctrl-C stops them all.
## MAILSYNC_ALLOW_PRIVATE_HOSTS=1: a laptop may connect to a mail server on localhost or the local network.
run: venv
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py migrate --noinput
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py seed_demo
	@echo ""
	@echo "  CRM running at http://127.0.0.1:$(PORT)/"
	@echo "  Demo login:    demo@example.com / demo-password-123"
	@echo "  Admin login:   admin@example.com / admin-password-123"
	@echo ""
	@DJANGO_DEBUG=$${DJANGO_DEBUG:-1} MAILSYNC_ALLOW_PRIVATE_HOSTS=$${MAILSYNC_ALLOW_PRIVATE_HOSTS:-1} MAILSYNC_SMART_BCC_DOMAIN=$${MAILSYNC_SMART_BCC_DOMAIN-bcc.localhost} \
		$(BIN)/python -m devtools.run --port $(PORT)

## make test: lint, the import contracts (.importlinter), migration check and the whole suite against
## PostgreSQL (TEST_DATABASE_URL).
test: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python manage.py makemigrations --check --dry-run
	DATABASE_URL=$(TEST_DATABASE_URL) MAILSYNC_ALLOW_PRIVATE_HOSTS=1 $(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

## Benchmarks (print figures; not tests). They use their own PostgreSQL database.
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/crm_bench
BENCH_MESSAGES ?= 20000

bench-sync: venv
	$(BIN)/python -m devtools.createdb $(BENCH_DATABASE_URL)
	DATABASE_URL=$(BENCH_DATABASE_URL) $(BIN)/python manage.py migrate --noinput -v0
	DATABASE_URL=$(BENCH_DATABASE_URL) MAILSYNC_ALLOW_PRIVATE_HOSTS=1 $(BIN)/python manage.py bench_sync --messages $(BENCH_MESSAGES)

BENCH_INBOX_MESSAGES ?= 200000
BENCH_INBOX_ARGS ?=

bench-inbox: venv
	$(BIN)/python -m devtools.createdb $(BENCH_DATABASE_URL)
	DATABASE_URL=$(BENCH_DATABASE_URL) $(BIN)/python manage.py migrate --noinput -v0
	DATABASE_URL=$(BENCH_DATABASE_URL) $(BIN)/python manage.py bench_inbox --messages $(BENCH_INBOX_MESSAGES) $(BENCH_INBOX_ARGS)

## make bench-scale: K mailboxes (BENCH_MAILBOXES) on a private Dovecot, two IDLE watchers and two Celery
## workers on Redis (BENCH_BROKER_URL); prints memory, DB connections, latency and takeover figures.
BENCH_SCALE_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/crm_bench_scale
BENCH_MAILBOXES ?= 2000
BENCH_BROKER_URL ?= redis://127.0.0.1:6379/14
BENCH_SCALE_ARGS ?=

bench-scale: venv
	$(BIN)/python -m devtools.createdb $(BENCH_SCALE_DATABASE_URL)
	DATABASE_URL=$(BENCH_SCALE_DATABASE_URL) $(BIN)/python manage.py migrate --noinput -v0
	DATABASE_URL=$(BENCH_SCALE_DATABASE_URL) MAILSYNC_ALLOW_PRIVATE_HOSTS=1 CELERY_BROKER_URL=$(BENCH_BROKER_URL) \
		$(BIN)/python manage.py bench_scale --mailboxes $(BENCH_MAILBOXES) --broker $(BENCH_BROKER_URL) $(BENCH_SCALE_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf var .pytest_cache
