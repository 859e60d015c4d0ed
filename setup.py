"""Builds the C++ extension ahead of time when torch is importable at build time
(``pip install --no-build-isolation -e .``); otherwise installs pure Python and the
extension is compiled on first use (see mumo_fast/ops/backends/cpp_build.py)."""

from glob import glob

from setuptools import find_packages, setup

ext_modules = []
cmdclass = {}
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    sources = sorted(glob("csrc/*.cpp"))  # relative paths: setuptools requires them
    if sources:
        ext_modules = [
            CppExtension(
                "mumo_fast._C",
                sources,
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
    packages=find_packages(include=["mumo_fast", "mumo_fast.*"])
    + ["mumo_fast.kernels", "mumo_fast.csrc"],
    package_dir={"mumo_fast.kernels": "kernels", "mumo_fast.csrc": "csrc"},
    package_data={"mumo_fast.csrc": ["*.cpp", "*.h"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
