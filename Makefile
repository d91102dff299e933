# Two entry points; both install what is missing first (idempotent).
PY := .venv/bin/python
STAMP := .venv/.vss-installed

.PHONY: install demo test test-fast test-gpu clean

install: $(STAMP)

$(STAMP): setup.py tools/install.sh tools/build_detectron2.py
	bash tools/install.sh
	touch $(STAMP)

# `make demo OUT=dir` writes the models, table, video and plot to dir (default output/quickstart).
demo: $(STAMP)
	$(PY) tools/quickstart.py $(if $(OUT),--output "$(OUT)")

# The whole suite (slow tests included), as CI runs it.
test: $(STAMP)
	$(PY) -m pytest -q tests

# Fast subset for development.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# Every CUDA path, compared and timed, into output/gpu_report.json. `KERNELS=DIR`: the optional
# kernels compiled ahead by `tools/build_kernels.py prepare --out DIR` on a CPU machine are
# finished here in seconds and checked; without it they are built first where nvcc and a CUDA
# torch exist (minutes). Without CUDA: says so, runs the CPU parts.
test-gpu: $(STAMP)
	$(if $(KERNELS),,VSS_EXTRAS=mamba bash tools/install.sh)
	$(PY) tools/gpu_check.py --report output/gpu_report.json $(if $(KERNELS),--kernels "$(KERNELS)")

clean:
	rm -rf .venv build output *.egg-info
