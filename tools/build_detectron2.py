"""Build and install detectron2 v0.6 from the registry sdist ``pb1-detectron2==0.6``.

That sdist holds the official v0.6 Python sources but not the C++ sources, so it does
not build as shipped. We add a minimal ``_C`` extension exposing only the build
information detectron2 asks for at import time (semantic segmentation needs none of
the detection C++ ops), apply the Pillow >= 10 fix, and install without build
isolation so the extension compiles against the installed torch.

Run with the interpreter of the target environment: ``python tools/build_detectron2.py``.
On a machine without registry access, ``--offline DIR`` takes the sdist from DIR and installs
it without dependencies (install detectron2's runtime requirements first, e.g. as wheels).
"""
import argparse
import glob
import os
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"

# Our own minimal extension; detectron2 imports `_C` at module load
# (layers/deform_conv.py) and collect_env calls these three functions.
VISION_CPP = r"""
#include <torch/extension.h>

namespace {

std::string compiler_version() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return "GCC " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__);
#else
  return "unknown";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("get_compiler_version", &compiler_version, "compiler used to build _C");
  m.def("get_cuda_version", []() { return std::string("not built"); },
        "CUDA version _C was built with (none: this build has no CUDA ops)");
  m.def("has_cuda", []() { return false; }, "whether _C has CUDA ops");
}
"""


def run(cmd, **kw):
    print("[build_detectron2] $", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def patch_pillow(src):
    """Pillow 10 removed Image.LINEAR; BILINEAR is the same filter."""
    path = os.path.join(src, "detectron2", "data", "transforms", "transform.py")
    with open(path) as f:
        text = f.read()
    if "Image.LINEAR" in text:
        with open(path, "w") as f:
            f.write(text.replace("Image.LINEAR", "Image.BILINEAR"))
        print(f"[build_detectron2] patched Image.LINEAR -> Image.BILINEAR in {path}")


def add_extension(src):
    csrc = os.path.join(src, "detectron2", "layers", "csrc")
    present = glob.glob(os.path.join(csrc, "**", "*.c*"), recursive=True)
    if present:
        sys.exit(f"[build_detectron2] unexpected C++ sources in the sdist: {present[:3]}; "
                 "this recipe expects the Python-only pb1-detectron2==0.6")
    os.makedirs(csrc, exist_ok=True)
    with open(os.path.join(csrc, "vision.cpp"), "w") as f:
        f.write(VISION_CPP)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", metavar="DIR", help="take the sdist from DIR; install without dependencies")
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="d2build-") as tmp:
        if args.offline:
            pattern = os.path.join(args.offline, "pb1[-_]detectron2-0.6.tar.gz")
            archives = glob.glob(pattern)
        else:
            run([py, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--no-build-isolation", SDIST, "-d", tmp])
            pattern = os.path.join(tmp, "*.tar.gz")
            archives = glob.glob(pattern)
        if len(archives) != 1:
            sys.exit(f"[build_detectron2] expected one sdist archive matching {pattern}, found {archives}")
        with tarfile.open(archives[0]) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = [d for d in glob.glob(os.path.join(tmp, "*")) if os.path.isdir(d)]
        patch_pillow(src)
        add_extension(src)
        # No GPU ops are built, whatever the machine has.
        env = dict(os.environ, FORCE_CUDA="0", CUDA_VISIBLE_DEVICES="")
        offline = ["--no-deps", "--no-index"] if args.offline else []
        run([py, "-m", "pip", "install", "--no-build-isolation", *offline, src], env=env)


if __name__ == "__main__":
    main()
