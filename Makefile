# Two entry points; both install what is missing first (idempotent).
PY := .venv/bin/python
STAMP := .venv/.vss-installed

.PHONY: install demo test test-fast test-gpu clean

install: $(STAMP)

$(STAMP): setup.py tools/install.sh tools/build_detectron2.py
	bash tools/install.sh
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/quickstart.py

# The whole suite (slow tests included), as CI runs it.
test: $(STAMP)
	$(PY) -m pytest -q tests

# Fast subset for development.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# Every CUDA path, compared and timed, into output/gpu_report.json (the optional kernels are
# built first where nvcc and a CUDA torch exist). Without CUDA: says so, runs the CPU parts.
test-gpu: $(STAMP)
	VSS_EXTRAS=mamba bash tools/install.sh
	$(PY) tools/gpu_check.py --report output/gpu_report.json

clean:
	rm -rf .venv build output *.egg-info
