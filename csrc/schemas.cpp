// Op schemas of the raw ops (the contract of mumo_fast/ops/backends/eager.py),
// and an empty Python module so that the library is importable as mumo_fast._C.
#include <Python.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY(mumo_fast, m) {
  m.def(
      "linear_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, Tensor? beta, str act)"
      " -> (Tensor, Tensor)");
  m.def(
      "linear_lowrank_fwd(Tensor x, Tensor weight, Tensor u, Tensor v, Tensor? bias,"
      " Tensor? gamma, Tensor? beta, str act) -> (Tensor, Tensor)");
  m.def(
      "conv_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, Tensor? beta,"
      " int[2] stride, int[2] padding, str act) -> (Tensor, Tensor)");
  m.def(
      "conv_bwd_per_task(Tensor dz, Tensor x, Tensor weight, int[2] stride, int[2] padding,"
      " bool need_x, bool need_w, int dx_im2col_max_positions, int dw_im2col_max_positions)"
      " -> (Tensor, Tensor)");
  m.def(
      "epilogue_bwd(Tensor gy, Tensor y, Tensor z, Tensor? gamma, str act)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bn_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? gamma, Tensor? beta, float eps,"
      " str act) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bn_bwd(Tensor gy, Tensor x, Tensor y, Tensor mean, Tensor rstd, Tensor? weight,"
      " Tensor? bias, Tensor? gamma, str act) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// The raw ops have no derivative of their own (the autograd Functions in
// mumo_fast/ops/functions.py differentiate them): differentiating one directly
// raises instead of silently returning a graph-less output.
TORCH_LIBRARY_IMPL(mumo_fast, Autograd, m) {
  for (const char* name : {"linear_fwd", "linear_lowrank_fwd", "conv_fwd", "conv_bwd_per_task",
                           "epilogue_bwd",
                           "bn_fwd", "bn_bwd"}) {
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
  }
}

#define MUMO_CAT_(a, b) a##b
#define MUMO_CAT(a, b) MUMO_CAT_(a, b)
#define MUMO_STR_(a) #a
#define MUMO_STR(a) MUMO_STR_(a)

PyMODINIT_FUNC MUMO_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, MUMO_STR(TORCH_EXTENSION_NAME), nullptr, -1,
                            nullptr};
  return PyModule_Create(&def);
}
