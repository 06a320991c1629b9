# The one entry point for developers and CI. Every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -W error::ResourceWarning -rs

.PHONY: install setup lint test test-fast cov mutants demo demo-federation demo-nats bench bench-lossy soak \
	soak-network churn resume-figures clean

install setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@# The federation test and the network fault test bed (tests/net, docs/netbed.md) build
	@# network namespaces with `ip` and `tc` (iproute2) and `nft` (nftables); the lossy benchmark
	@# turns the links' segmentation offloads off with `ethtool`. A fresh CI machine runs as root
	@# with Debian's tools only: install them there; anyone else goes on without.
	@if { ! command -v ip || ! command -v tc || ! command -v nft || ! command -v ethtool; } >/dev/null 2>&1 \
		&& [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables ethtool >/dev/null \
		|| echo "could not install iproute2, nftables and ethtool: the network-namespace tests will be skipped"; \
	fi
	@# The console's test (tests/test_telemetry_console.py) drives a real headless chromium.
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| echo "could not install chromium: the console's browser test will fail as root"; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint,all]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check callosum_like tests examples fuzz tools
	$(BIN)/ruff format --check callosum_like tests examples fuzz tools
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(PYTEST) -q

test-fast: $(STAMP)
	$(PYTEST) -q -x

cov: $(STAMP)
	$(BIN)/python -m coverage run -m pytest -q -W error::ResourceWarning
	$(BIN)/python -m coverage report
	PYTHONASYNCIODEBUG=1 $(PYTEST) -q -p no:cacheprovider

# Deliberate breaks of the core, each run against the tests that should catch it (by hand,
# not part of `make test`; docs/contributing.md). MUTANTS=name-part runs only those.
mutants: $(STAMP)
	$(BIN)/python tools/mutants.py $(if $(MUTANTS),-k $(MUTANTS))

demo: $(STAMP)
	$(BIN)/python -m callosum_like demo

demo-federation: $(STAMP)
	$(BIN)/python examples/federation/demo.py

# The federation scenario on NATS: a hub nats-server and a leaf node, no relay of ours.
demo-nats: $(STAMP)
	$(BIN)/python examples/nats_federation.py

# A bounded soak: mixed load while the server is killed and restarted; SOAK_DURATION seconds.
SOAK_DURATION ?= 300
soak: $(STAMP)
	$(BIN)/python -m callosum_like soak --duration $(SOAK_DURATION)

# The network soak (root: a network test bed): the same load, direct and through a relay, while
# the links flap for 1-5 s instead of the server being killed; with resumption nothing may fail.
soak-network: $(STAMP)
	$(BIN)/python -m callosum_like soak --network --duration $(SOAK_DURATION)

# The resumption figures of docs/reliability.md (root: network test beds): 100 link flaps under
# mixed load per transport, direct and through a relay; a flap longer than resume_timeout; small
# calls and 16 MiB uploads under loss and delay. About half an hour; RESUME_SCALE=0.05 is a
# quick run. Writes bench/results/resume-figures.json.
RESUME_SCALE ?= 1
resume-figures: $(STAMP)
	$(BIN)/python -m callosum_like.tools.flaps.figures --scale $(RESUME_SCALE)

# The churn soak: 10,000 agents in 4 processes, a tenth replaced every 10 s, for
# CHURN_DURATION seconds per transport; bound-side memory and open files must stay flat.
# One process per transport, so that neither inherits the other's heap.
CHURN_DURATION ?= 300
churn: $(STAMP)
	@status=0; for transport in zeromq tcp; do \
		$(BIN)/python -m callosum_like soak --churn --transport $$transport \
			--duration $(CHURN_DURATION) || status=1; \
	done; exit $$status

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m callosum_like bench

# W4 (small calls beside a 16 MiB echo) over a lossy network (root: a network test bed: 2 %
# loss, 20 ms one way) for QUIC, TCP and ZeroMQ in one run; writes bench/results/lossy.json.
bench-lossy: $(STAMP)
	$(BIN)/python -m callosum_like.tools.bench.lossy

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
