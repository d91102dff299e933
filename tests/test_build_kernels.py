"""tools/build_kernels.py: option handling, the nvcc command of `prepare`, and `finish` without CUDA.

The compile itself (minutes of nvcc) stays out of the suite: README.md gives its measured run.
"""
import json
import os
import platform
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import build_kernels as bk  # noqa: E402

TOOL = str(REPO / "tools" / "build_kernels.py")
PYTHON = ".".join(platform.python_version_tuple()[:2])
NO_GPU = dict(os.environ, CUDA_VISIBLE_DEVICES="")


def run_tool(*args, env=NO_GPU, timeout=300):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("text, archs", [
    ("80,90", ["80", "90"]), ("90, sm_80", ["80", "90"]), ("8.6", ["86"]), ("90,90", ["90"]),
    ("100,90a,80", ["80", "90a", "100"]),
])
def test_architectures_are_parsed_and_sorted(text, archs):
    assert bk.parse_archs(text) == archs


@pytest.mark.parametrize("text", ["", "ampere", "8", "sm_9x", ","])
def test_bad_architectures_are_refused(text):
    with pytest.raises(bk.Refusal, match="--arch"):
        bk.parse_archs(text)


def test_torch_and_python_versions():
    assert bk.parse_torch("2.11.0") == ("2.11.0", None)
    assert bk.parse_torch("2.11.0+cu130") == ("2.11.0", "cu130")
    assert bk.parse_python("3.12") == "3.12"
    for bad in ("2.11", "2.11.0+cpu", "latest"):
        with pytest.raises(bk.Refusal, match="--torch"):
            bk.parse_torch(bad)
    for bad in ("3", "3.12.1", "py312"):
        with pytest.raises(bk.Refusal, match="--python"):
            bk.parse_python(bad)


def test_prepare_defaults_name_the_target_and_need_an_output_folder():
    args = bk.parser().parse_args(["prepare", "--out", "/tmp/x"])
    assert (args.arch, args.torch, args.python) == ("80,90", "2.11.0", "3.12")
    with pytest.raises(SystemExit) as e:
        bk.parser().parse_args(["prepare"])
    assert e.value.code == 2


def test_prepare_refuses_bad_options_before_downloading(tmp_path):
    for argv, message in [
        (["prepare", "--out", str(tmp_path), "--arch", "ampere"], "--arch"),
        (["prepare", "--out", str(tmp_path), "--torch", "2.11"], "--torch"),
        (["prepare", "--out", str(tmp_path), "--python", "3"], "--python"),
        (["prepare", "--out", str(tmp_path), "flash-attn"], "unknown package"),
        (["prepare", "--out", str(tmp_path), "--version", "mamba-ssm"], "--version"),
    ]:
        with pytest.raises(bk.Refusal, match=message):
            bk.main(argv)
    assert not os.listdir(tmp_path)


def test_the_old_command_line_is_build_and_checks_packages_first():
    with pytest.raises(bk.Refusal, match="unknown package"):
        bk.main(["--arch", "90", "flash-attn"])


def test_build_without_a_gpu_asks_for_architectures():
    proc = run_tool("build")
    assert proc.returncode != 0
    assert "no CUDA GPU is visible: name the architectures with --arch" in proc.stderr


def test_target_build_settings_are_read_from_torchs_own_files():
    from torch.utils import cpp_extension

    settings = bk.read_torch_build_settings(os.path.dirname(torch.__file__))
    assert settings["version"] == torch.__version__
    assert settings["cuda"] == torch.version.cuda
    assert settings["common_nvcc_flags"] == cpp_extension.COMMON_NVCC_FLAGS
    assert settings["default_std"] in ("c++17", "c++20")


SETTINGS = {"common_nvcc_flags": ["-D__CUDA_NO_HALF_OPERATORS__", "--expt-relaxed-constexpr"], "default_std": "c++17"}


def test_nvcc_command_keeps_the_package_flags_and_names_only_the_wanted_architectures():
    ext = {"name": "pkg.selective_scan_cuda", "extra_compile_args": {"nvcc": [
        "-O3", "--use_fast_math", "-gencode", "arch=compute_75,code=sm_75", "-gencode",
        "arch=compute_121,code=sm_121", "--threads", "4"]}, "define_macros": [("WITH_X", None), ("N", "2")]}
    cmd = bk.nvcc_command("nvcc", "a.cu", "a.o", ext, ["/inc/torch", "/inc/cuda"], SETTINGS, ["80", "90"])
    assert cmd[:8] == ["nvcc", "-I/inc/torch", "-I/inc/cuda", "-DWITH_X", "-DN=2", "-c", "a.cu", "-o"]
    assert cmd[9:] == ["-D__CUDA_NO_HALF_OPERATORS__", "--expt-relaxed-constexpr", "--compiler-options", "-fPIC",
                       "-O3", "--use_fast_math", "--threads", "4", "-DTORCH_API_INCLUDE_EXTENSION_H",
                       "-DTORCH_EXTENSION_NAME=selective_scan_cuda",
                       "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                       "-std=c++17"]
    assert not any("python" in c.lower() for c in cmd)  # the objects do not depend on the target's Python
    # a package's own -std wins over torch's default
    ext["extra_compile_args"]["nvcc"].append("-std=c++20")
    assert [c for c in bk.nvcc_command("nvcc", "a.cu", "a.o", ext, [], SETTINGS, ["90"]) if c.startswith("-std")] \
        == ["-std=c++20"]


def test_architectures_of_an_object_are_read_from_cuobjdump(monkeypatch):
    listing = "ELF file    1: a.1.sm_80.cubin\nELF file    2: a.2.sm_90.cubin\nELF file    3: a.3.sm_90.cubin\n"
    monkeypatch.setattr(bk.subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout=listing))
    assert bk.elf_archs("cuobjdump", "a.o") == ["80", "90"]


def test_setup_py_extensions_are_captured_without_building(tmp_path):
    (tmp_path / "setup.py").write_text(textwrap.dedent("""
        from setuptools import setup
        from torch.utils.cpp_extension import CUDAExtension
        setup(name="demo", packages=["demo"], ext_modules=[CUDAExtension(
            name="demo_cuda", sources=["csrc/b.cpp", "csrc/k.cu"], include_dirs=["csrc"],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-gencode", "arch=compute_75,code=sm_75"]})])
    """))
    captured = bk.capture_extensions(str(tmp_path), "mamba-ssm", "/nonexistent-cuda")
    assert captured["packages"] == ["demo"]
    (ext,) = captured["extensions"]
    assert ext["name"] == "demo_cuda" and ext["sources"] == ["csrc/b.cpp", "csrc/k.cu"]
    assert ext["extra_compile_args"]["nvcc"][-1] == "arch=compute_75,code=sm_75"


MANIFEST_TARGET = {"archs": ["80", "90"], "torch": "2.11.0+cu130", "torch_cuda": "13.0", "python": "3.12"}


def test_mismatches_name_every_difference():
    manifest = {"target": MANIFEST_TARGET}
    assert bk.mismatches(manifest, "3.12", "2.11.0+cu130", "13.0", ["90"]) == []
    assert bk.mismatches(manifest, "3.12", "2.11.0", "13.0", ["80", "90"]) == []
    problems = bk.mismatches(manifest, "3.11", "2.14.1+cu130", "12.8", ["86"])
    assert len(problems) == 4
    assert "Python 3.11 runs here" in problems[0] and "torch 2.14.1+cu130 runs here" in problems[1]
    assert "CUDA 12.8" in problems[2] and "sm_86" in problems[3]
    assert bk.mismatches(manifest, "3.12", "2.11.0", None, None) == [
        "this torch has no CUDA",
        "no CUDA GPU is visible (finish links for a GPU machine; --no-gpu skips this check)"]


def write_manifest(folder, target, packages=None):
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"format": bk.FORMAT, "target": target, "runtime_wheels": [],
                "packages": packages or {"causal-conv1d": {"version": "1.7.0", "python_package": "python/causal_conv1d",
                                                           "extensions": []}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_finish_refuses_a_folder_without_manifest(tmp_path):
    proc = run_tool("finish", str(tmp_path))
    assert proc.returncode != 0
    assert f"{tmp_path} has no manifest.json" in proc.stderr


def test_finish_refuses_another_target_and_says_what_to_prepare(tmp_path):
    write_manifest(tmp_path, {**MANIFEST_TARGET, "python": "3.99"})
    proc = run_tool("finish", str(tmp_path))
    assert proc.returncode != 0
    assert "do not fit this environment" in proc.stderr
    assert f"Python {PYTHON} runs here, the objects were prepared for Python 3.99" in proc.stderr
    assert "no CUDA GPU is visible" in proc.stderr
    assert f"--torch {torch.__version__.split('+')[0]} --python {PYTHON}" in proc.stderr


@pytest.mark.skipif(torch.version.cuda is None, reason="the installed torch has no CUDA (a CPU-only build)")
def test_finish_without_cuda_refuses_only_for_the_missing_gpu(tmp_path):
    target = {**MANIFEST_TARGET, "python": PYTHON, "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    write_manifest(tmp_path, target)
    proc = run_tool("finish", str(tmp_path))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("  - ")]
    assert lines == ["  - no CUDA GPU is visible (finish links for a GPU machine; --no-gpu skips this check)"]


BINDING = r"""
#include <torch/extension.h>
#include "demo.h"
torch::Tensor twice(torch::Tensor x) { return x * demo_factor(); }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("twice", &twice); }
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.version.cuda is None, reason="the installed torch has no CUDA (a CPU-only build)")
def test_finish_links_prepared_objects_into_an_importable_module(tmp_path):
    """`finish --no-gpu` on a prepared folder whose one object stands in for nvcc's (g++ makes it):
    the binding is compiled with this torch, linked with the object and libcudart, placed with
    its package, and imports."""
    folder = tmp_path / "prepared"
    (folder / "src" / "demo" / "csrc").mkdir(parents=True)
    (folder / "src" / "demo" / "csrc" / "binding.cpp").write_text(BINDING)
    (folder / "src" / "demo" / "csrc" / "demo.h").write_text("int demo_factor();\n")
    (folder / "objects" / "demo_cuda").mkdir(parents=True)
    subprocess.run(["g++", "-c", "-fPIC", "-x", "c++", "-", "-o", str(folder / "objects" / "demo_cuda" / "k.o")],
                   input="int demo_factor() { return 2; }\n", text=True, check=True)
    (folder / "python" / "demo").mkdir(parents=True)
    (folder / "python" / "demo" / "__init__.py").write_text("import demo_cuda\n")
    write_manifest(folder, {**MANIFEST_TARGET, "python": PYTHON, "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda}, {"demo": {
        "version": "0", "python_package": "python/demo", "extensions": [{
            "name": "demo_cuda", "binding_sources": ["src/demo/csrc/binding.cpp"], "include_dirs": ["src/demo/csrc"],
            "cxx_args": ["-O1"], "objects": [{"object": "objects/demo_cuda/k.o"}]}]}})
    proc = run_tool("finish", "--no-gpu", str(folder), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    site = proc.stdout.strip().splitlines()[-1]
    assert os.path.isfile(os.path.join(site, "demo_cuda.so")) and os.path.isfile(os.path.join(site, "demo", "__init__.py"))
    record = json.loads(open(os.path.join(site, "vss_finish.json")).read())
    assert record["modules"][0]["module"] == "demo_cuda"
    check = subprocess.run([sys.executable, "-c", "import torch, demo, demo_cuda; print(demo_cuda.twice(torch.ones(2)).tolist())"],
                           env=dict(NO_GPU, PYTHONPATH=site), capture_output=True, text=True)
    assert check.stdout.strip() == "[2.0, 2.0]", check.stderr[-2000:]


def test_importable_asks_a_fresh_interpreter():
    assert bk._importable("json")
    assert not bk._importable("vss_no_such_module")


def test_the_headers_the_bindings_lack_travel_with_the_objects(tmp_path):
    (tmp_path / "cuda" / "include" / "crt").mkdir(parents=True)
    (tmp_path / "cuda" / "include" / "crt" / "host_defines.h").write_text("#pragma once\n")
    (tmp_path / "cuda" / "include" / "cuda_runtime_api.h").write_text("")
    bk.stage_cuda_headers(str(tmp_path / "cuda"), str(tmp_path / "out"))
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.h")) == [
        "cuda_include/crt/host_defines.h"]


def test_a_packed_folder_is_read_and_unpacked_by_finish(tmp_path):
    folder = tmp_path / "prepared"
    write_manifest(folder, {**MANIFEST_TARGET, "python": "3.99"})
    (folder / "objects").mkdir()
    (folder / "objects" / "k.o").write_bytes(b"\0" * 1000)
    (folder / "site-py3.99-torch0").mkdir()  # an earlier finish: not packed
    assert bk.main(["pack", str(folder)]) == 0
    archive = str(folder) + ".tar.xz"
    assert bk.load_manifest(archive)["target"]["python"] == "3.99"
    extracted = tmp_path / "elsewhere"
    extracted.mkdir()
    os.replace(archive, extracted / "prepared.tar.xz")
    assert bk.unpack(str(extracted / "prepared.tar.xz")) == str(extracted / "prepared")
    assert sorted(os.listdir(extracted / "prepared")) == ["manifest.json", "objects"]
    # finish refuses the archive's target like the folder's
    proc = run_tool("finish", str(extracted / "prepared.tar.xz"))
    assert proc.returncode != 0 and "the objects were prepared for Python 3.99" in proc.stderr
