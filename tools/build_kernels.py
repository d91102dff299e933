#!/usr/bin/env python
"""Build the optional CUDA kernels of the TV3S scan (causal-conv1d, mamba-ssm) for this machine's GPUs.

Their sdists compile every kernel for about ten GPU generations, which takes the better part of
an hour; a build for the compute capabilities of the visible GPUs alone takes minutes. Each
package's own setup.py runs unchanged, except that the nvcc architecture flags of its CUDA
extensions are replaced by the wanted ones; the wheel it builds is then installed.

    python tools/build_kernels.py                          # sdists from the registry
    python tools/build_kernels.py --offline DIR            # sdists in DIR, no registry access
    python tools/build_kernels.py --arch 80,90 mamba-ssm   # chosen architectures and packages

Run it with the interpreter of the target environment (tools/install.sh does, for VSS_EXTRAS=mamba).
"""
import argparse
import glob
import os
import subprocess
import sys
import tarfile
import tempfile

# package -> (sdist name prefix, version requirement, variable that skips the prebuilt-wheel download)
PACKAGES = {
    "causal-conv1d": ("causal_conv1d", ">=1.4", "CAUSAL_CONV1D_FORCE_BUILD"),
    "mamba-ssm": ("mamba_ssm", ">=2.2", "MAMBA_FORCE_BUILD"),
}


def nvcc_flags(flags, archs):
    """`flags` with every -gencode pair replaced by one pair per compute capability in `archs` ("90")."""
    kept, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag == "-gencode":
            skip = True  # its value is the next flag
        elif not flag.startswith(("-gencode=", "--generate-code")):
            kept.append(flag)
    return kept + [f for a in archs for f in ("-gencode", f"arch=compute_{a},code=sm_{a}")]


# Runs a package's setup.py (argv: compute capabilities "80,90", wheel folder, this folder) with
# torch's CUDAExtension wrapped so that its nvcc flags name those architectures only.
RUNNER = r"""
import runpy, sys
import torch.utils.cpp_extension as cpp

archs, dist_dir = sys.argv[1].split(","), sys.argv[2]
sys.path.insert(0, sys.argv[3])
from build_kernels import nvcc_flags

original = cpp.CUDAExtension

def cuda_extension(*args, **kwargs):
    compile_args = kwargs.get("extra_compile_args", {})
    if "nvcc" in compile_args:
        compile_args["nvcc"] = nvcc_flags(compile_args["nvcc"], archs)
    return original(*args, **kwargs)

cpp.CUDAExtension = cuda_extension
sys.argv = ["setup.py", "bdist_wheel", "--dist-dir", dist_dir]
runpy.run_path("setup.py", run_name="__main__")
"""


def log(msg):
    print(f"[build_kernels] {msg}", flush=True)


def visible_archs():
    import torch

    if not torch.cuda.is_available():
        sys.exit("[build_kernels] no CUDA GPU is visible: name the architectures with --arch (e.g. 90)")
    return sorted({"".join(map(str, torch.cuda.get_device_capability(i))) for i in range(torch.cuda.device_count())})


def fetch_sdist(package, offline, tmp):
    prefix, requirement, _ = PACKAGES[package]
    if offline:
        pattern = os.path.join(offline, f"{prefix}-*.tar.gz")
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", f"{package}{requirement}", "-d", tmp], check=True)
        pattern = os.path.join(tmp, f"{prefix}-*.tar.gz")
    archives = glob.glob(pattern)
    if len(archives) != 1:
        sys.exit(f"[build_kernels] expected one sdist matching {pattern}, found {archives}")
    return archives[0]


def build(package, archs, offline, jobs):
    with tempfile.TemporaryDirectory(prefix=f"vss-{package}-") as tmp:
        archive = fetch_sdist(package, offline, tmp)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = [d for d in glob.glob(os.path.join(tmp, "*")) if os.path.isdir(d)]
        dist = os.path.join(tmp, "dist")
        env = dict(os.environ, MAX_JOBS=str(jobs), **{PACKAGES[package][2]: "TRUE"})
        log(f"building {os.path.basename(archive)} for sm_{', sm_'.join(archs)} with {jobs} jobs")
        tools = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([sys.executable, "-c", RUNNER, ",".join(archs), dist, tools], cwd=src, env=env, check=True)
        wheels = glob.glob(os.path.join(dist, "*.whl"))
        if len(wheels) != 1:
            sys.exit(f"[build_kernels] expected one wheel in {dist}, found {wheels}")
        # Offline, the package's own requirements (einops, triton, ...) must already be installed.
        extra = ["--no-deps", "--no-index"] if offline else []
        subprocess.run([sys.executable, "-m", "pip", "install", *extra, wheels[0]], check=True)
        log(f"installed {os.path.basename(wheels[0])}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packages", nargs="*", metavar="PACKAGE",
                        help=f"what to build, of {', '.join(PACKAGES)} (default: both, in that order)")
    parser.add_argument("--arch", help="compute capabilities without the dot, comma-separated (default: visible GPUs)")
    parser.add_argument("--offline", metavar="DIR", help="take the sdists from DIR and install without dependencies")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel compile jobs (MAX_JOBS)")
    args = parser.parse_args()
    unknown = sorted(set(args.packages) - set(PACKAGES))
    if unknown:
        parser.error(f"unknown package(s) {unknown}: expected some of {list(PACKAGES)}")
    archs = args.arch.split(",") if args.arch else visible_archs()
    for package in args.packages or PACKAGES:
        build(package, archs, args.offline, args.jobs)


if __name__ == "__main__":
    main()
