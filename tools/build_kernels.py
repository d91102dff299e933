#!/usr/bin/env python
"""Build the optional CUDA kernels of the TV3S scan (causal-conv1d, mamba-ssm).

Two ways:

* ``prepare`` + ``finish`` (GPU time is scarce): everything that does not depend on the GPU
  machine's Python is compiled ahead on any Linux x86-64 machine, no GPU needed, for a named
  target; the GPU machine then only compiles the small C++ bindings and links, in seconds.

      # on a CPU machine: registry packages only (CUDA toolkit pieces, the target torch's headers)
      python tools/build_kernels.py prepare --arch 80,90 --torch 2.11.0 --python 3.12 --out DIR
      # on the GPU machine, with the Python and torch named above
      python tools/build_kernels.py finish DIR        # or: make test-gpu KERNELS=DIR

  ``prepare`` downloads nvidia-cuda-nvcc, -crt, nvidia-nvvm, nvidia-cuda-cccl, -runtime and
  -cuobjdump of the target torch's CUDA version and the target torch wheel (of which only the
  headers and its cpp_extension.py are kept), and the packages' sdists. It runs each package's
  own setup.py only to read its extensions (sources, include dirs, compile flags), then compiles
  every .cu file with nvcc as the target torch's BuildExtension would (its common nvcc flags and
  its default C++ standard, read from the target's cpp_extension.py), with the packages' flags
  kept except the -gencode pairs, which name the wanted architectures. No Python header is
  given to nvcc: the .cu objects depend on torch's headers and the architectures, not on Python.
  ``cuobjdump --list-elf`` checks that each object holds exactly the named architectures.
  DIR gets manifest.json (versions, architectures, per-step times, sizes, objects, the
  remaining step), objects/, the bindings' sources and headers (src/), the packages' Python
  code (python/), the CUDA headers the bindings need that torch's CUDA packages lack
  (cuda_include/: CUDA 13's crt/) and the wheels of the pure-Python modules the kernels' Python
  code imports (wheels/: einops, packaging). The toolkit, the headers and the downloads stay in
  a work folder beside it (--work, default DIR.work), which the GPU machine does not need. A
  run cut short resumes: objects already compiled by the same command are kept.

  ``finish`` refuses when the running Python, torch or CUDA version, or the GPU's architecture,
  does not match the manifest; otherwise it compiles each binding with the running torch's own
  extension builder (torch.utils.cpp_extension.load), links it with the prepared objects and
  libcudart, and places the packages with their extensions in DIR/site-py<python>-torch<torch>
  (with the wheels of wheels/ that this environment lacks), which ``--install`` also adds to
  this environment's site-packages (a .pth file). It checks that the modules and packages
  import, and prints the folder to put on sys.path as its last line.

* ``build`` (the default when no subcommand is named; tools/install.sh uses it for
  VSS_EXTRAS=mamba): on one machine with nvcc and a GPU, each package's own setup.py runs
  unchanged except for the architecture flags, and the wheel it builds is installed.

      python tools/build_kernels.py [build]                      # sdists from the registry
      python tools/build_kernels.py build --offline DIR          # sdists in DIR
      python tools/build_kernels.py build --arch 80,90 mamba-ssm
"""
import argparse
import ast
import concurrent.futures
import glob
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile

# package -> (sdist name prefix, version requirement, variable that skips the prebuilt-wheel download)
PACKAGES = {
    "causal-conv1d": ("causal_conv1d", ">=1.4", "CAUSAL_CONV1D_FORCE_BUILD"),
    "mamba-ssm": ("mamba_ssm", ">=2.2", "MAMBA_FORCE_BUILD"),
}
# The versions prepared by default: the newest at the time of writing, and the ones measured.
DEFAULT_VERSIONS = {"causal-conv1d": "1.7.0", "mamba-ssm": "2.3.2.post1"}
DEFAULT_ARCHS = "80,90"
DEFAULT_TORCH = "2.11.0"
DEFAULT_PYTHON = "3.12"
# Registry packages that make up a CUDA_HOME able to compile (no driver, no GPU needed).
TOOLKIT = ["nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvvm", "nvidia-cuda-cccl", "nvidia-cuda-runtime"]
# cuobjdump (only read the objects: the registry has it from CUDA 13.2 on; any of the major version reads them)
CUOBJDUMP = "nvidia-cuda-cuobjdump"
# Pure-Python modules that the kernels' Python code imports on vss's path (triton comes with torch).
RUNTIME_WHEELS = ["einops", "packaging"]
# mamba_ssm/__init__.py imports its Mamba2/Mamba3 modules and LM head model, which need tilelang,
# transformers and more; vss uses only mamba_ssm.ops.selective_scan_interface. The placed package
# gets this __init__ (the package's own is kept beside it as __init__.py.orig).
MAMBA_INIT = '''"""mamba-ssm, placed by vss's tools/build_kernels.py: only the selective scan is imported here.

The package's own __init__ (kept as __init__.py.orig) also imports Mamba2, Mamba3 and the LM head
model, whose requirements (tilelang, transformers, ...) vss does not need.
"""
__version__ = {version!r}

from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, mamba_inner_fn  # noqa: F401
'''
FORMAT = 1
# Toolkit headers that travel with the prepared folder, for the bindings (see stage_cuda_headers).
CUDA_INCLUDE = "cuda_include"
CUDA_HEADERS = ["crt"]


class Refusal(SystemExit):
    """A clear stop: what does not match, and what to do."""

    def __init__(self, message):
        super().__init__(f"[build_kernels] ERROR: {message}")


def log(msg):
    print(f"[build_kernels] {msg}", flush=True)


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


def parse_archs(text):
    """'80,90' or 'sm_80, 9.0' -> ['80', '90'] (sorted, unique); exits on anything else."""
    archs = set()
    for item in filter(None, (s.strip() for s in text.split(","))):
        value = item.lower().removeprefix("sm_").removeprefix("compute_").replace(".", "")
        if not re.fullmatch(r"\d{2,3}[af]?", value):
            raise Refusal(f"--arch: {item!r} is not a compute capability (e.g. 80, 90, 8.6, sm_90)")
        archs.add(value)
    if not archs:
        raise Refusal("--arch names no architecture")
    return sorted(archs, key=lambda a: (int(re.match(r"\d+", a).group()), a))


def parse_python(text):
    if not re.fullmatch(r"3\.\d{1,2}", text):
        raise Refusal(f"--python: {text!r} is not a Python version like 3.12")
    return text


def parse_torch(text):
    """'2.11.0' or '2.11.0+cu130' -> ('2.11.0', 'cu130' or None)."""
    m = re.fullmatch(r"(\d+\.\d+\.\d+)(?:\+(cu\d+))?", text)
    if not m:
        raise Refusal(f"--torch: {text!r} is not a torch version like 2.11.0 or 2.11.0+cu130")
    return m.group(1), m.group(2)


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def tree_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
               if not os.path.islink(os.path.join(d, f)))


# ---- build: one machine, the packages' setup.py --------------------------------------------------

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


def visible_archs():
    import torch

    if not torch.cuda.is_available():
        raise Refusal("no CUDA GPU is visible: name the architectures with --arch (e.g. 90)")
    return sorted({"".join(map(str, torch.cuda.get_device_capability(i))) for i in range(torch.cuda.device_count())})


def fetch_sdist(package, offline, tmp, requirement=None):
    prefix, default_requirement, _ = PACKAGES[package]
    requirement = requirement or default_requirement
    if offline:
        pattern = os.path.join(offline, f"{prefix}-*.tar.gz")
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", f"{package}{requirement}", "-d", tmp], check=True)
        exact = requirement[2:] if requirement.startswith("==") else "*"
        pattern = os.path.join(tmp, f"{prefix}-{exact}.tar.gz")
    archives = glob.glob(pattern)
    if len(archives) != 1:
        raise Refusal(f"expected one sdist matching {pattern}, found {archives}")
    return archives[0]


def unpack_sdist(archive, dest):
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    (src,) = [d for d in glob.glob(os.path.join(dest, "*")) if os.path.isdir(d)]
    return src


def build(package, archs, offline, jobs):
    with tempfile.TemporaryDirectory(prefix=f"vss-{package}-") as tmp:
        archive = fetch_sdist(package, offline, tmp)
        src = unpack_sdist(archive, tmp)
        dist = os.path.join(tmp, "dist")
        env = dict(os.environ, MAX_JOBS=str(jobs), **{PACKAGES[package][2]: "TRUE"})
        log(f"building {os.path.basename(archive)} for sm_{', sm_'.join(archs)} with {jobs} jobs")
        tools = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([sys.executable, "-c", RUNNER, ",".join(archs), dist, tools], cwd=src, env=env, check=True)
        wheels = glob.glob(os.path.join(dist, "*.whl"))
        if len(wheels) != 1:
            raise Refusal(f"expected one wheel in {dist}, found {wheels}")
        # Offline, the package's own requirements (einops, triton, ...) must already be installed.
        extra = ["--no-deps", "--no-index"] if offline else []
        subprocess.run([sys.executable, "-m", "pip", "install", *extra, wheels[0]], check=True)
        log(f"installed {os.path.basename(wheels[0])}")


def cmd_build(args):
    unknown = sorted(set(args.packages) - set(PACKAGES))
    if unknown:
        raise Refusal(f"unknown package(s) {unknown}: expected some of {list(PACKAGES)}")
    archs = parse_archs(args.arch) if args.arch else visible_archs()
    for package in args.packages or PACKAGES:
        build(package, archs, args.offline, args.jobs)
    return 0


# ---- prepare: everything but the bindings, on a machine without a GPU -------------------------------

class Steps:
    """Times each named step, logs it, and keeps the record for the manifest."""

    def __init__(self):
        self.records = []

    def run(self, name, fn, *args, **kwargs):
        log(f"step {name} ...")
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = round(time.perf_counter() - start, 1)
        self.records.append({"step": name, "seconds": seconds})
        log(f"step {name}: {seconds} s")
        return result


def pip_download(requirements, dest, *options):
    os.makedirs(dest, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", dest, *options, *requirements],
                   check=True, stdout=subprocess.DEVNULL)


def _newest(pattern):
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        raise Refusal(f"nothing matches {pattern}")
    return found[-1]


def target_torch_files(torch_version, local, python, downloads, work):
    """Download the target torch wheel (linux x86-64, the target Python) and keep its headers,
    cpp_extension.py, version.py and TorchConfig; returns the kept torch folder and the wheel's name."""
    wheel_dir = os.path.join(downloads, "torch")
    spec = f"torch=={torch_version}" + (f"+{local}" if local else "")
    tag = python.replace(".", "")
    wheels = glob.glob(os.path.join(wheel_dir, f"torch-{torch_version}*-cp{tag}-cp{tag}-*.whl"))
    if not wheels:
        pip_download([spec], wheel_dir, "--only-binary", ":all:", "--python-version", python,
                     "--implementation", "cp", "--abi", f"cp{tag}", "--platform", "manylinux_2_28_x86_64")
        wheels = glob.glob(os.path.join(wheel_dir, f"torch-{torch_version}*-cp{tag}-cp{tag}-*.whl"))
    wheel = sorted(wheels)[-1]
    dest = os.path.join(work, "torch")
    shutil.rmtree(dest, ignore_errors=True)
    keep = ("torch/include/", "torch/utils/cpp_extension.py", "torch/version.py", "torch/share/cmake/Torch/")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest, [n for n in z.namelist() if n.startswith(keep)])
    return os.path.join(dest, "torch"), os.path.basename(wheel), os.path.getsize(wheel)


def read_torch_build_settings(torch_dir):
    """What the target torch's BuildExtension adds to nvcc, read from its own files."""
    with open(os.path.join(torch_dir, "version.py")) as f:
        version_py = f.read()
    version = re.search(r"__version__ = '([^']+)'", version_py).group(1)
    cuda = re.search(r"^cuda: .*= '([^']+)'", version_py, re.M)
    with open(os.path.join(torch_dir, "utils", "cpp_extension.py")) as f:
        source = f.read()
    common = None
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMMON_NVCC_FLAGS" for t in node.targets):
            common = ast.literal_eval(node.value)
    std = re.search(r"cuda_cflags = \['-std=(c\+\+\d+)'\]", source) or re.search(r"cpp_flag_prefix \+ '(c\+\+\d+)'", source)
    if common is None or std is None:
        raise Refusal(f"could not read COMMON_NVCC_FLAGS / the default C++ standard from {torch_dir}/utils/cpp_extension.py")
    return {"version": version, "cuda": cuda.group(1) if cuda else None, "common_nvcc_flags": common,
            "default_std": std.group(1)}


def setup_toolkit(cuda_version, downloads, work):
    """A CUDA_HOME from the registry's nvcc, crt, nvvm, cccl, runtime and cuobjdump packages."""
    dest = os.path.join(downloads, "toolkit")
    wanted = [f"{name}=={cuda_version}.*" for name in TOOLKIT]
    have = {name: glob.glob(os.path.join(dest, name.replace("-", "_") + "-*.whl")) for name in TOOLKIT}
    if not all(have.values()):
        pip_download(wanted, dest, "--only-binary", ":all:", "--platform", "manylinux_2_17_x86_64",
                     "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_12_x86_64",
                     "--python-version", "3")
    root = os.path.join(work, "toolkit")
    shutil.rmtree(root, ignore_errors=True)
    versions = {}
    for name in TOOLKIT:
        wheel = _newest(os.path.join(dest, name.replace("-", "_") + "-*.whl"))
        versions[name] = os.path.basename(wheel).split("-")[1]
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                path = z.extract(info, root)
                if (info.external_attr >> 16) & 0o111:
                    os.chmod(path, 0o755)
    (home,) = glob.glob(os.path.join(root, "nvidia", "cu*"))
    major = int(cuda_version.split(".")[0])
    tool_dest = os.path.join(downloads, "cuobjdump")
    if not glob.glob(os.path.join(tool_dest, CUOBJDUMP.replace("-", "_") + "-*.whl")):
        pip_download([f"{CUOBJDUMP}>={major},<{major + 1}"], tool_dest, "--only-binary", ":all:")
    wheel = _newest(os.path.join(tool_dest, CUOBJDUMP.replace("-", "_") + "-*.whl"))
    versions[CUOBJDUMP] = os.path.basename(wheel).split("-")[1]
    tool_root = os.path.join(work, "cuobjdump")
    shutil.rmtree(tool_root, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tool_root)
    (cuobjdump,) = glob.glob(os.path.join(tool_root, "nvidia", "*", "bin", "cuobjdump"))
    os.chmod(cuobjdump, 0o755)
    out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True, text=True, check=True)
    release = re.search(r"release (\d+\.\d+)", out.stdout).group(1)
    if release != cuda_version:
        raise Refusal(f"nvcc reports CUDA {release}, the target torch was built with {cuda_version}")
    return home, cuobjdump, versions, out.stdout.strip().splitlines()[-1]


# Imports a package's setup.py (argv: the JSON file to write) with setuptools.setup and torch's
# CUDAExtension replaced, and writes what its CUDA extensions ask for.
CAPTURE = r"""
import json, runpy, sys
import setuptools
import torch.utils.cpp_extension as cpp

out, captured = sys.argv[1], []

def cuda_extension(name, sources, *args, **kwargs):
    captured.append({"name": name, "sources": [str(s) for s in sources],
                     "include_dirs": [str(d) for d in kwargs.get("include_dirs", [])],
                     "extra_compile_args": kwargs.get("extra_compile_args", {}),
                     "define_macros": kwargs.get("define_macros", []),
                     "libraries": kwargs.get("libraries", []),
                     "extra_link_args": kwargs.get("extra_link_args", [])})
    return None

def setup(**kwargs):
    with open(out, "w") as f:
        json.dump({"extensions": captured, "packages": kwargs.get("packages") or []}, f, indent=1)
    raise SystemExit(0)

cpp.CUDAExtension = cuda_extension
setuptools.setup = setup
sys.argv = ["setup.py", "bdist_wheel"]
runpy.run_path("setup.py", run_name="__main__")
"""


def capture_extensions(src, package, cuda_home):
    env = dict(os.environ, CUDA_HOME=cuda_home, **{PACKAGES[package][2]: "TRUE"})
    env.pop("TORCH_CUDA_ARCH_LIST", None)
    out = os.path.join(src, "vss_captured_extensions.json")
    proc = subprocess.run([sys.executable, "-c", CAPTURE, out], cwd=src, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.isfile(out):
        raise Refusal(f"reading the extensions of {package}'s setup.py failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    with open(out) as f:
        return json.load(f)


def nvcc_command(nvcc, source, obj, ext, include_dirs, settings, archs):
    """The nvcc command of torch's BuildExtension (ninja path, Linux) for one .cu file of `ext`."""
    flags = list(ext["extra_compile_args"].get("nvcc", []))
    flags += ["-DTORCH_API_INCLUDE_EXTENSION_H", f"-DTORCH_EXTENSION_NAME={ext['name'].split('.')[-1]}"]
    post = settings["common_nvcc_flags"] + ["--compiler-options", "-fPIC"] + nvcc_flags(flags, archs)
    if not any(f.startswith("-std=") for f in post):
        post.append(f"-std={settings['default_std']}")
    macros = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in ext.get("define_macros", [])]
    return [nvcc, *[f"-I{d}" for d in include_dirs], *macros, "-c", source, "-o", obj, *post]


def elf_archs(cuobjdump, obj):
    """Architectures of the cubins in `obj` (cuobjdump --list-elf), e.g. ['80', '90']."""
    out = subprocess.run([cuobjdump, "--list-elf", obj], capture_output=True, text=True, check=True).stdout
    return sorted(set(re.findall(r"\.sm_(\d+[af]?)\.cubin", out)), key=lambda a: int(re.match(r"\d+", a).group()))


def _children_cpu():
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compile_objects(ext, src, out, cuda_home, cuobjdump, torch_dir, settings, archs, jobs_note):
    """Compile every .cu of `ext` into out/objects/<ext>/, one nvcc at a time; objects already
    built by the same command are kept (a cut-short prepare resumes)."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    include_dirs = [os.path.join(src, d) if not os.path.isabs(d) else d for d in ext["include_dirs"]]
    # torch's include_paths('cuda') of the target, then the toolkit's; CCCL (cub, thrust, libcu++)
    # is where nvcc.profile does not look for it in the registry's layout.
    include_dirs += [os.path.join(torch_dir, "include"), os.path.join(torch_dir, "include", "torch", "csrc", "api", "include"),
                     os.path.join(cuda_home, "include")]
    results = []
    cu_sources = [s for s in ext["sources"] if s.endswith(".cu")]
    for i, source in enumerate(cu_sources, 1):
        rel = os.path.join("objects", ext["name"], os.path.splitext(os.path.basename(source))[0] + ".o")
        obj = os.path.join(out, rel)
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        cmd = nvcc_command(nvcc, os.path.join(src, source), obj, ext, include_dirs, settings, archs)
        cmd[1:1] = ["-isystem", os.path.join(cuda_home, "include", "cccl")]
        digest = hashlib.sha256(json.dumps(cmd).encode()).hexdigest()
        stamp = obj + ".cmd.sha256"
        if os.path.isfile(obj) and os.path.isfile(stamp) and open(stamp).read() == digest:
            seconds, cpu_seconds = json.load(open(obj + ".seconds"))
            reused = True
            log(f"  [{i}/{len(cu_sources)}] {source}: already compiled by the same command ({seconds} s then)")
        else:
            log(f"  [{i}/{len(cu_sources)}] nvcc {source} for sm_{', sm_'.join(archs)} {jobs_note}")
            start, cpu_start = time.perf_counter(), _children_cpu()
            proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
            seconds = round(time.perf_counter() - start, 1)
            # CPU time of nvcc and its cicc/ptxas children: what the file costs on an idle machine
            cpu_seconds = round(_children_cpu() - cpu_start, 1)
            if proc.returncode != 0:
                raise Refusal(f"nvcc failed on {source} (exit {proc.returncode}):\n{shlex.join(cmd)}\n"
                              f"{proc.stdout[-3000:]}{proc.stderr[-5000:]}")
            with open(stamp, "w") as f:
                f.write(digest)
            with open(obj + ".seconds", "w") as f:
                json.dump([seconds, cpu_seconds], f)
            reused = False
        found = elf_archs(cuobjdump, obj)
        if found != archs:
            raise Refusal(f"{rel} holds cubins for {found}, not the named {archs}")
        size = os.path.getsize(obj)
        log(f"  [{i}/{len(cu_sources)}] {source}: {seconds} s ({cpu_seconds} s of CPU), {human(size)}, "
            f"cubins sm_{', sm_'.join(found)}")
        results.append({"source": source, "object": rel, "seconds": seconds, "cpu_seconds": cpu_seconds,
                        "reused": reused, "bytes": size,
                        "elf_archs": found, "command": [os.path.relpath(c, out) if c.startswith(out + os.sep) else c for c in cmd]})
    return results


def stage_sources(ext, src, out, package):
    """Copy what the binding needs on the GPU machine: its non-.cu sources and the headers of
    its include folders, under out/src/<package>/ (paths relative to the sdist kept)."""
    dest = os.path.join(out, "src", package)
    wanted = {s for s in ext["sources"] if not s.endswith(".cu")}
    for d in ext["include_dirs"]:
        rel = os.path.relpath(d if os.path.isabs(d) else os.path.join(src, d), src)
        for path in glob.glob(os.path.join(src, rel, "**", "*"), recursive=True):
            if path.endswith((".h", ".hpp", ".cuh")):
                wanted.add(os.path.relpath(path, src))
    for rel in sorted(wanted):
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(dest, rel))
    return {
        "binding_sources": [os.path.join("src", package, s) for s in ext["sources"] if not s.endswith(".cu")],
        "include_dirs": [os.path.join("src", package, os.path.relpath(d if os.path.isabs(d) else os.path.join(src, d), src))
                         for d in ext["include_dirs"]],
    }


def stage_python(package, src, out, version):
    """The package's Python code, under out/python/ (mamba_ssm with the trimmed __init__)."""
    prefix = PACKAGES[package][0]
    dest = os.path.join(out, "python", prefix)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(os.path.join(src, prefix), dest, ignore=shutil.ignore_patterns("__pycache__"))
    note = None
    if package == "mamba-ssm":
        os.replace(os.path.join(dest, "__init__.py"), os.path.join(dest, "__init__.py.orig"))
        with open(os.path.join(dest, "__init__.py"), "w") as f:
            f.write(MAMBA_INIT.format(version=version))
        note = "__init__.py trimmed to the selective scan (the package's own is __init__.py.orig)"
    return {"python_package": os.path.join("python", prefix), "python_note": note}


def stage_cuda_headers(cuda_home, out):
    """The headers the bindings need (through c10/cuda) that torch's own CUDA packages lack:
    nvidia-cuda-runtime's cuda_runtime_api.h includes crt/*.h, which CUDA 13 ships apart
    (nvidia-cuda-crt). Copied to out/cuda_include/."""
    dest = os.path.join(out, CUDA_INCLUDE)
    shutil.rmtree(dest, ignore_errors=True)
    for name in CUDA_HEADERS:
        shutil.copytree(os.path.join(cuda_home, "include", name), os.path.join(dest, name))


def cmd_prepare(args):
    archs = parse_archs(args.arch)
    torch_version, local = parse_torch(args.torch)
    python = parse_python(args.python)
    packages = args.packages or list(PACKAGES)
    unknown = sorted(set(packages) - set(PACKAGES))
    if unknown:
        raise Refusal(f"unknown package(s) {unknown}: expected some of {list(PACKAGES)}")
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise Refusal("prepare runs on Linux x86-64 (the registry's CUDA toolkit packages)")
    out = os.path.abspath(args.out)
    work = os.path.abspath(args.work or out.rstrip("/") + ".work")
    downloads = os.path.join(work, "downloads")
    os.makedirs(out, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    total = time.perf_counter()
    steps = Steps()
    log(f"preparing {', '.join(packages)} for sm_{', sm_'.join(archs)}, torch {args.torch}, Python {python} "
        f"in {out} (work: {work})")

    torch_dir, torch_wheel, torch_wheel_bytes = steps.run(
        "torch_headers", target_torch_files, torch_version, local, python, downloads, work)
    settings = read_torch_build_settings(torch_dir)
    if settings["cuda"] is None:
        raise Refusal(f"{torch_wheel} is a CPU-only build: name a CUDA build (e.g. --torch {torch_version}+cu130)")
    log(f"target torch {settings['version']} (CUDA {settings['cuda']}): common nvcc flags "
        f"{settings['common_nvcc_flags']}, default -std={settings['default_std']}")
    cuda_home, cuobjdump, toolkit_versions, nvcc_version = steps.run("cuda_toolkit", setup_toolkit, settings["cuda"], downloads, work)
    log(f"CUDA_HOME {cuda_home}: {nvcc_version}")

    manifest_path = os.path.join(out, "manifest.json")
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "prepared_on": {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
                        "jobs": 1},
        "target": {"archs": archs, "torch": settings["version"], "torch_cuda": settings["cuda"], "python": python,
                   "torch_wheel": torch_wheel, "torch_wheel_bytes": torch_wheel_bytes},
        "toolkit": {"nvcc": nvcc_version, "packages": toolkit_versions},
        "torch_build_settings": settings,
        "packages": {},
        "steps": steps.records,
    }
    for package in packages:
        src_root = os.path.join(work, "src", package)
        shutil.rmtree(src_root, ignore_errors=True)
        requirement = f"=={args.versions.get(package, DEFAULT_VERSIONS[package])}" if not args.offline else None
        archive = steps.run(f"{package}_sdist", fetch_sdist, package, args.offline, os.path.join(downloads, "sdist"),
                            requirement) if not args.offline else fetch_sdist(package, args.offline, None)
        src = unpack_sdist(archive, src_root)
        version = os.path.basename(archive)[len(PACKAGES[package][0]) + 1:-len(".tar.gz")]
        captured = steps.run(f"{package}_setup_py", capture_extensions, src, package, cuda_home)
        if not captured["extensions"]:
            raise Refusal(f"{package}'s setup.py declared no CUDA extension")
        entry = {"version": version, "sdist": os.path.basename(archive), "extensions": []}
        entry.update(stage_python(package, src, out, version))
        for ext in captured["extensions"]:
            objects = steps.run(f"{package}_compile", compile_objects, ext, src, out, cuda_home, cuobjdump, torch_dir, settings,
                                archs, "(one nvcc at a time)")
            staged = stage_sources(ext, src, out, package)
            entry["extensions"].append({
                "name": ext["name"], **staged, "cxx_args": ext["extra_compile_args"].get("cxx", []),
                "define_macros": ext.get("define_macros", []), "libraries": ext.get("libraries", []),
                "extra_link_args": ext.get("extra_link_args", []), "objects": objects,
                "package_nvcc_args": ext["extra_compile_args"].get("nvcc", []),
            })
        manifest["packages"][package] = entry
        with open(manifest_path, "w") as f:  # a partial manifest already tells what finished
            json.dump(manifest, f, indent=1)

    steps.run("cuda_headers", stage_cuda_headers, cuda_home, out)
    manifest["cuda_include"] = CUDA_INCLUDE
    if RUNTIME_WHEELS:
        steps.run("runtime_wheels", pip_download, RUNTIME_WHEELS, os.path.join(out, "wheels"), "--only-binary", ":all:")
        manifest["runtime_wheels"] = sorted(os.listdir(os.path.join(out, "wheels")))
    seconds = round(time.perf_counter() - total, 1)
    objects = [o for p in manifest["packages"].values() for e in p["extensions"] for o in e["objects"]]
    manifest["total_seconds"] = seconds
    manifest["compile_seconds"] = round(sum(o["seconds"] for o in objects), 1)
    manifest["compile_cpu_seconds"] = round(sum(o["cpu_seconds"] for o in objects), 1)
    manifest["load_average_at_end"] = os.getloadavg()
    manifest["sizes"] = {
        "objects_bytes": sum(o["bytes"] for o in objects),
        "out_bytes": 0,  # filled below, manifest included
        "work_bytes": tree_size(work),
        "toolkit_bytes": tree_size(os.path.join(work, "toolkit")),
        "torch_headers_bytes": tree_size(os.path.join(torch_dir, "include")),
    }
    manifest["finish"] = {
        "command": "python tools/build_kernels.py finish DIR   (or: make test-gpu KERNELS=DIR)",
        "needs": f"Python {python}, torch {settings['version']}, a GPU of sm_{', sm_'.join(archs)}, g++, ninja",
        "what": "compiles each binding (src/*/...cpp) with the running torch's extension builder and links it "
                "with objects/ and libcudart into DIR/site-<python>-<torch>",
    }
    for _ in range(2):  # the size of the folder includes the manifest itself
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=1)
        manifest["sizes"]["out_bytes"] = tree_size(out)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    log(f"done in {seconds} s ({manifest['compile_seconds']} s of nvcc, {manifest['compile_cpu_seconds']} s of CPU): "
        f"{len(objects)} objects, "
        f"{human(manifest['sizes']['objects_bytes'])}; {out}: {human(manifest['sizes']['out_bytes'])}; "
        f"work {work}: {human(manifest['sizes']['work_bytes'])}")
    for record in steps.records:
        log(f"  {record['step']}: {record['seconds']} s")
    log(f"on the GPU machine: python tools/build_kernels.py finish {out}")
    return 0


# ---- finish: the bindings and the link, on the GPU machine ----------------------------------------

ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tar")


def load_manifest(folder):
    """The manifest of a prepared folder, or of an archive of one (`pack`), checked."""
    if folder.endswith(ARCHIVE_SUFFIXES) and os.path.isfile(folder):
        with tarfile.open(folder) as tar:
            member = next((m for m in tar if m.name.split("/", 1)[-1] == "manifest.json"), None)
            if member is None:
                raise Refusal(f"{folder} holds no manifest.json: make it with `tools/build_kernels.py pack DIR`")
            manifest, path = json.load(tar.extractfile(member)), f"{folder}:{member.name}"
    else:
        path = os.path.join(folder, "manifest.json")
        if not os.path.isfile(path):
            raise Refusal(f"{folder} has no manifest.json: make it with `tools/build_kernels.py prepare --out {folder}`")
        with open(path) as f:
            manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise Refusal(f"{path} is of format {manifest.get('format')}, this tool reads format {FORMAT}")
    if not manifest.get("packages"):
        raise Refusal(f"{path} lists no prepared package (was prepare cut short?)")
    return manifest


def mismatches(manifest, python, torch_version, torch_cuda, capabilities):
    """Why the running environment cannot use the prepared objects (empty when it can)."""
    target, problems = manifest["target"], []
    if python != target["python"]:
        problems.append(f"Python {python} runs here, the objects were prepared for Python {target['python']}")
    if torch_version.split("+")[0] != target["torch"].split("+")[0]:
        problems.append(f"torch {torch_version} runs here, the objects were compiled against torch {target['torch']}'s headers")
    if torch_cuda is None:
        problems.append("this torch has no CUDA")
    elif torch_cuda.split(".")[0] != str(target["torch_cuda"]).split(".")[0]:
        problems.append(f"this torch uses CUDA {torch_cuda}, the objects were compiled with CUDA {target['torch_cuda']}")
    if capabilities is None:
        problems.append("no CUDA GPU is visible (finish links for a GPU machine; --no-gpu skips this check)")
    else:
        missing = sorted(set(capabilities) - set(target["archs"]))
        if missing:
            problems.append(f"the GPU(s) here are sm_{', sm_'.join(missing)}, the objects hold sm_{', sm_'.join(target['archs'])}")
    return problems


def running_capabilities():
    import torch

    if not torch.cuda.is_available():
        return None
    return sorted({"".join(map(str, torch.cuda.get_device_capability(i))) for i in range(torch.cuda.device_count())})


def cudart_library():
    """(folder, file name) of the CUDA runtime this torch loads: its nvidia-cuda-runtime package, else CUDA_HOME."""
    import torch

    site = os.path.dirname(os.path.dirname(torch.__file__))
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    places = [os.path.join(site, "nvidia", "cu*", "lib"), os.path.join(site, "nvidia", "cuda_runtime", "lib")]
    places += [os.path.join(home, "lib64"), os.path.join(home, "lib")] if home else []
    for place in places:  # the runtime torch itself loads first
        found = [c for c in glob.glob(os.path.join(place, "libcudart.so*")) if re.search(r"libcudart\.so(\.\d+)*$", c)]
        if found:
            best = sorted(found, key=lambda c: (c.count("."), c))[-1]
            return os.path.dirname(best), os.path.basename(best)
    raise Refusal("no libcudart.so found next to torch (nvidia-cuda-runtime) or in CUDA_HOME")


def site_folder(folder, manifest):
    import torch

    return os.path.join(folder, f"site-py{platform.python_version()}-torch{torch.__version__}")


def finish_extension(folder, ext, build_root, site, cuda_include, cudart):
    """Compile one binding with the running torch's extension builder, link it with the prepared
    objects, and copy the module into `site`."""
    import torch
    from torch.utils import cpp_extension

    name = ext["name"].split(".")[-1]
    build_dir = os.path.join(build_root, name)
    os.makedirs(build_dir, exist_ok=True)
    lib_dir, lib_name = cudart
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    objects = [os.path.join(folder, o["object"]) for o in ext["objects"]]
    for obj in objects:
        if not os.path.isfile(obj):
            raise Refusal(f"prepared object {obj} is missing")
    macros = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in ext.get("define_macros", [])]
    ldflags = [*objects, f"-L{torch_lib}", "-lc10_cuda", "-ltorch_cuda", f"-L{lib_dir}", f"-l:{lib_name}",
               f"-Wl,-rpath,{lib_dir}", f"-Wl,-rpath,{torch_lib}", *ext.get("extra_link_args", []), *[f"-l{lib}" for lib in ext.get("libraries", [])]]
    start = time.perf_counter()
    cpp_extension.load(
        name=name,
        sources=[os.path.join(folder, s) for s in ext["binding_sources"]],
        extra_cflags=[*ext.get("cxx_args", []), *macros],
        extra_include_paths=[os.path.join(folder, d) for d in ext["include_dirs"]] + cuda_include,
        extra_ldflags=ldflags,
        build_directory=build_dir,
        with_cuda=False,  # no .cu left: nvcc is not needed here
        is_python_module=False,  # built, not imported into this process
        verbose=False,
    )
    seconds = round(time.perf_counter() - start, 1)
    built = os.path.join(build_dir, f"{name}.so")
    target = os.path.join(site, f"{name}.so")
    shutil.copy2(built, target)
    return {"module": name, "seconds": seconds, "bytes": os.path.getsize(target), "path": target}


def cuda_include_dirs():
    """CUDA runtime headers for the bindings (they include ATen/cuda headers): those of the
    nvidia-cuda-runtime package next to torch, else CUDA_HOME's."""
    import torch

    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    site = os.path.dirname(os.path.dirname(torch.__file__))
    # the headers of the runtime torch loads first, then CUDA_HOME's
    candidates = glob.glob(os.path.join(site, "nvidia", "cu*", "include")) + glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "include"))
    candidates += [os.path.join(home, "include")] if home else []
    for c in candidates:
        if os.path.isfile(os.path.join(c, "cuda_runtime_api.h")):
            return [c]
    raise Refusal("no CUDA runtime headers (cuda_runtime_api.h) in CUDA_HOME or next to torch")


def cmd_pack(args):
    """DIR -> DIR.tar.xz: what finish needs (no site-* folder of an earlier finish), manifest first."""
    folder = os.path.abspath(args.folder).rstrip("/")
    manifest = load_manifest(folder)
    archive = folder + ".tar.xz"
    start = time.perf_counter()
    name = os.path.basename(folder)
    entries = ["manifest.json", *(e for e in sorted(os.listdir(folder)) if e != "manifest.json" and not e.startswith("site-"))]
    with tarfile.open(archive + ".tmp", "w:xz", preset=args.preset) as tar:
        for entry in entries:
            tar.add(os.path.join(folder, entry), f"{name}/{entry}")
    os.replace(archive + ".tmp", archive)
    packed = sum(tree_size(os.path.join(folder, e)) for e in entries)
    log(f"{archive}: {human(os.path.getsize(archive))} (from {human(packed)}), "
        f"{time.perf_counter() - start:.1f} s; finish takes it as it is")
    print(archive)
    return 0


def unpack(archive):
    """An archive of `pack` -> the folder it holds, extracted beside it (once)."""
    with tarfile.open(archive) as tar:
        top = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        if len(top) != 1:
            raise Refusal(f"{archive} should hold one folder, it holds {sorted(top)}")
        dest = os.path.join(os.path.dirname(archive), top.pop())
        if not os.path.isfile(os.path.join(dest, "manifest.json")):
            log(f"extracting {archive} ...")
            tar.extractall(os.path.dirname(archive), filter="data")
    return dest


def cmd_finish(args):
    import torch

    folder = os.path.abspath(args.folder)
    manifest = load_manifest(folder)
    if folder.endswith(ARCHIVE_SUFFIXES) and os.path.isfile(folder):
        folder = unpack(folder)
    python = ".".join(platform.python_version_tuple()[:2])
    capabilities = running_capabilities()
    problems = mismatches(manifest, python, torch.__version__, torch.version.cuda, capabilities)
    if args.no_gpu:
        problems = [p for p in problems if not p.startswith(("no CUDA GPU", "the GPU(s)"))]
    if problems:
        raise Refusal("the prepared kernels in {} do not fit this environment:\n  - {}\nPrepare for it: "
                      "tools/build_kernels.py prepare --arch {} --torch {} --python {} --out DIR".format(
                          folder, "\n  - ".join(problems), ",".join(capabilities or manifest["target"]["archs"]),
                          torch.__version__.split("+")[0], python))
    site = site_folder(folder, manifest)
    start = time.perf_counter()
    # ninja (a pip package) is where this interpreter's scripts are, which may not be on PATH
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    shutil.rmtree(site, ignore_errors=True)
    os.makedirs(site)
    for package in manifest["packages"].values():
        shutil.copytree(os.path.join(folder, package["python_package"]),
                        os.path.join(site, os.path.basename(package["python_package"])))
    cuda_include, cudart = cuda_include_dirs(), cudart_library()
    if manifest.get("cuda_include"):  # after the running CUDA's own headers: only what they lack
        cuda_include.append(os.path.join(folder, manifest["cuda_include"]))
    extensions = [ext for package in manifest["packages"].values() for ext in package["extensions"]]
    with tempfile.TemporaryDirectory(prefix="vss-kernels-finish-") as build_root, \
            concurrent.futures.ThreadPoolExecutor(max(1, len(extensions))) as pool:
        # the bindings side by side: each is one g++ (torch/extension.h) and one link
        for ext in extensions:
            log(f"binding {ext['name']}: compile and link with {len(ext['objects'])} prepared objects ...")
        futures = [pool.submit(finish_extension, folder, ext, build_root, site, cuda_include, cudart) for ext in extensions]
        built = [f.result() for f in futures]
    for result in built:
        log(f"binding {result['module']}: {result['seconds']} s, {human(result['bytes'])}")
    wheels = os.path.join(folder, "wheels")
    missing = [w for w in manifest.get("runtime_wheels", []) if not _importable(w.split("-")[0])]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", site,
                        *[os.path.join(wheels, w) for w in missing]], check=True, stdout=subprocess.DEVNULL)
    # as vss would: torch first (it loads libc10, libtorch), the modules, then the placed packages
    # (mamba_ssm's __init__ imports its selective scan interface, causal_conv1d its conv)
    packages = [os.path.basename(p["python_package"]) for p in manifest["packages"].values()]
    check = subprocess.run([sys.executable, "-c", "import " + ", ".join(["torch", *(b["module"] for b in built), *packages])],
                           env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))),
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise Refusal(f"the linked modules or their packages do not import:\n{check.stderr[-3000:]}")
    record = {"site": site, "seconds": round(time.perf_counter() - start, 1), "modules": built,
              "python": platform.python_version(), "torch": torch.__version__, "capabilities": capabilities}
    with open(os.path.join(site, "vss_finish.json"), "w") as f:
        json.dump(record, f, indent=1)
    if args.install:
        pth = os.path.join(sysconfig.get_paths()["purelib"], "vss-kernels.pth")
        with open(pth, "w") as f:
            f.write(site + "\n")
        log(f"installed: {pth} puts {site} on sys.path")
    log(f"finished in {record['seconds']} s; put {site} on sys.path (PYTHONPATH) to use the kernels")
    print(site)
    return 0


def _importable(module):
    """Whether a fresh interpreter finds `module` (this process may see setuptools' vendored copies)."""
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ---- command line ----------------------------------------------------------------------------------

def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    b = sub.add_parser("build", help="build and install on this machine (nvcc and a GPU here)")
    b.add_argument("packages", nargs="*", metavar="PACKAGE",
                   help=f"what to build, of {', '.join(PACKAGES)} (default: both, in that order)")
    b.add_argument("--arch", help="compute capabilities without the dot, comma-separated (default: visible GPUs)")
    b.add_argument("--offline", metavar="DIR", help="take the sdists from DIR and install without dependencies")
    b.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel compile jobs (MAX_JOBS)")
    pr = sub.add_parser("prepare", help="compile ahead, without a GPU, for a named target")
    pr.add_argument("packages", nargs="*", metavar="PACKAGE",
                    help=f"what to prepare, of {', '.join(PACKAGES)} (default: both)")
    pr.add_argument("--arch", default=DEFAULT_ARCHS, help=f"compute capabilities, comma-separated (default {DEFAULT_ARCHS})")
    pr.add_argument("--torch", default=DEFAULT_TORCH,
                    help=f"the target's torch version, e.g. 2.11.0 or 2.11.0+cu130 (default {DEFAULT_TORCH})")
    pr.add_argument("--python", default=DEFAULT_PYTHON, help=f"the target's Python version (default {DEFAULT_PYTHON})")
    pr.add_argument("--out", required=True, help="the folder to carry to the GPU machine (outside the repository)")
    pr.add_argument("--work", help="toolkit, headers and downloads (default: OUT.work)")
    pr.add_argument("--version", dest="versions", action="append", default=[], metavar="PACKAGE==VERSION",
                    help=f"package versions (default {', '.join(f'{k}=={v}' for k, v in DEFAULT_VERSIONS.items())})")
    pr.add_argument("--offline", metavar="DIR", help="take the sdists from DIR")
    pk = sub.add_parser("pack", help="DIR -> DIR.tar.xz, for carrying (finish takes either)")
    pk.add_argument("folder", help="the folder `prepare --out` wrote")
    pk.add_argument("--preset", type=int, default=6, choices=range(10), metavar="0-9", help="xz preset (default 6)")
    f = sub.add_parser("finish", help="on the GPU machine: the bindings and the link, in seconds")
    f.add_argument("folder", help="the folder `prepare --out` wrote, or its archive from `pack`")
    f.add_argument("--install", action="store_true", help="also add the result to this environment (a .pth file)")
    f.add_argument("--no-gpu", action="store_true", help="link without a visible GPU (its architecture is not checked)")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # the old command line (no subcommand) is `build`
    if not argv or argv[0] not in ("build", "prepare", "pack", "finish", "-h", "--help"):
        argv = ["build", *argv]
    args = parser().parse_args(argv)
    if args.command == "prepare":
        versions = {}
        for item in args.versions:
            name, _, version = item.partition("==")
            if name not in PACKAGES or not version:
                raise Refusal(f"--version: {item!r} is not PACKAGE==VERSION with PACKAGE one of {list(PACKAGES)}")
            versions[name] = version
        args.versions = versions
        return cmd_prepare(args)
    if args.command == "finish":
        return cmd_finish(args)
    if args.command == "pack":
        return cmd_pack(args)
    return cmd_build(args)


if __name__ == "__main__":
    sys.exit(main())
