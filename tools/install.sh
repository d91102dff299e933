#!/usr/bin/env bash
# Installs everything vss needs into a project-local virtual environment.
# Idempotent: each step checks first and does nothing when already satisfied.
#
#   VSS_VENV    where the environment lives (default: .venv next to this repo)
#   VSS_PYTHON  interpreter used to create it (default: python3.11, else python3)
#   VSS_EXTRAS  set to "mamba" to also build mamba-ssm / causal-conv1d (CUDA only)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VSS_VENV:-$root/.venv}
py=$venv/bin/python
log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

if [ ! -x "$py" ]; then
  base=${VSS_PYTHON:-$(command -v python3.11 || command -v python3 || true)}
  [ -n "$base" ] || die "no python3 found; install Python >= 3.10 or set VSS_PYTHON"
  log "creating virtual environment $venv with $base"
  "$base" -m venv "$venv" || die "could not create $venv (is the venv module installed?)"
fi
pip() { "$py" -m pip --disable-pip-version-check "$@"; }
has() { "$py" - "$@" <<'PY' 2>/dev/null
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
PY
}

# torch + torchvision: the registry's default (CUDA-enabled) build. It runs on CPU;
# the CPU-only local wheel does not work with the registry's torchvision.
if has torch torchvision; then
  log "torch $("$py" -c 'import torch; print(torch.__version__)') and torchvision already present"
else
  log "installing torch and torchvision (default registry build, ~1 min)"
  pip install "torchvision>=0.16" || die "pip could not install torchvision (and its torch)"
  has torch torchvision || die "torch/torchvision installed but 'import torchvision' fails"
fi

# Build requirements of detectron2 and our own runtime requirements.
pip install -q "setuptools>=61" wheel ninja || die "could not install build tools"

if has detectron2; then
  log "detectron2 already importable: using it as it is"
else
  log "building detectron2 v0.6 from the registry sdist pb1-detectron2==0.6"
  "$py" "$root/tools/build_detectron2.py" || die "detectron2 build failed (see the log above)"
  has detectron2 || die "detectron2 installed but 'import detectron2' fails"
fi

log "installing vss (editable) and its dependencies"
pip install -q -e "$root[test]" || die "pip install -e . failed"

if [ "${VSS_EXTRAS:-}" = "mamba" ]; then
  if has mamba_ssm causal_conv1d; then
    log "mamba-ssm and causal-conv1d already importable"
  elif "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' && command -v nvcc >/dev/null; then
    log "building the optional CUDA kernels causal-conv1d and mamba-ssm for this machine's GPUs (minutes)"
    "$py" "$root/tools/build_kernels.py" || die "mamba kernels failed to build (see the log above)"
  else
    log "skipping mamba kernels: they need a CUDA GPU and nvcc (pure-PyTorch paths are used)"
  fi
fi

"$py" -c 'import vss, detectron2, torch; print("[install] ready: torch", torch.__version__, "| detectron2", detectron2.__version__)'
