"""Builds the C++ extension ahead of time when torch is importable at build time
(``pip install --no-build-isolation -e .``); otherwise installs pure Python and the
extension is compiled on first use (see mumo_fast/ops/backends/cpp_build.py)."""

import importlib.util
import os
from glob import glob

from setuptools import find_packages, setup


def _cpp_build():
    """mumo_fast/ops/backends/cpp_build.py, loaded by path (no package import, no torch)."""
    path = os.path.join("mumo_fast", "ops", "backends", "cpp_build.py")
    spec = importlib.util.spec_from_file_location("_mumo_fast_cpp_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _marker_source():
    """build/mumo_fast_csrc_sha256.cpp: the digest of csrc/ compiled into the extension, which
    the loader compares with csrc/ before using it (a stale build is rebuilt just in time)."""
    cpp_build = _cpp_build()
    os.makedirs("build", exist_ok=True)
    path = os.path.join("build", "mumo_fast_csrc_sha256.cpp")
    with open(path, "w") as f:
        f.write(cpp_build.marker_source(cpp_build.sources_digest("csrc")))
    return path


ext_modules = []
cmdclass = {}
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    sources = sorted(glob("csrc/*.cpp"))  # relative paths: setuptools requires them
    if sources:
        ext_modules = [
            CppExtension(
                "mumo_fast._C",
                [*sources, _marker_source()],
                extra_compile_args=["-O3", "-fopenmp"],
                extra_link_args=["-fopenmp"],
            )
        ]
        cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=False)}
except ImportError:
    pass

# csrc/ ships inside the package as mumo_fast/csrc so that an installed copy can still
# JIT-compile the extension (mumo_fast/ops/backends/cpp_build.py looks in both places).
setup(
    packages=find_packages(include=["mumo_fast", "mumo_fast.*"]) + ["mumo_fast.csrc"],
    package_dir={"mumo_fast.csrc": "csrc"},
    package_data={"mumo_fast.csrc": ["*.cpp", "*.h"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
