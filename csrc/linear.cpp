// linear_fwd and linear_lowrank_fwd: GEMMs through ATen, then the fused epilogue
// in place on the GEMM output (z) writing y.
#include <torch/library.h>

#include "common.h"

namespace mumo_fast {

namespace {

std::tuple<at::Tensor, at::Tensor> finish(at::Tensor z3, const c10::optional<at::Tensor>& bias,
                                          const c10::optional<at::Tensor>& gamma,
                                          const c10::optional<at::Tensor>& beta, Act act) {
  const int64_t T = z3.size(0), N = z3.size(1), O = z3.size(2);
  at::Tensor z = z3.view({T, N, O, 1});
  at::Tensor y = at::empty_like(z);
  epilogue_fwd_into(z, N * O, O, 0, T, z, y, bias, gamma, beta, act);
  finish_activation(y, act);
  return {y.view({T, N, O}), z3};
}

void check_vectors(const at::Tensor& x, int64_t T, int64_t O,
                   const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& gamma,
                   const c10::optional<at::Tensor>& beta) {
  check_channel_vector(bias, "bias", x, T, O);
  check_channel_vector(gamma, "gamma", x, T, O);
  check_channel_vector(beta, "beta", x, T, O);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> linear_fwd(const at::Tensor& x_in, const at::Tensor& w_in,
                                              const c10::optional<at::Tensor>& bias,
                                              const c10::optional<at::Tensor>& gamma,
                                              const c10::optional<at::Tensor>& beta,
                                              c10::string_view act_name) {
  const Act act = parse_act(act_name);
  TORCH_CHECK(x_in.dim() == 3, "mumo_fast.linear_fwd: x must be [T, N, IN], got ", x_in.sizes());
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t T = x.size(0), N = x.size(1), I = x.size(2);
  at::Tensor z;
  if (w.dim() == 2) {
    TORCH_CHECK(w.size(1) == I, "mumo_fast.linear_fwd: weight must be [OUT, ", I, "]");
    z = at::mm(x.view({T * N, I}), w.t()).view({T, N, w.size(0)});
  } else {
    TORCH_CHECK(w.dim() == 3 && w.size(0) == T && w.size(2) == I,
                "mumo_fast.linear_fwd: weight must be [", T, ", OUT, ", I, "], got ", w.sizes());
    z = at::bmm(x, w.transpose(1, 2));
  }
  check_vectors(x, T, z.size(2), bias, gamma, beta);
  return finish(z.contiguous(), contig(bias), contig(gamma), contig(beta), act);
}

std::tuple<at::Tensor, at::Tensor> linear_lowrank_fwd(
    const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& u_in,
    const at::Tensor& v_in, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
    c10::string_view act_name) {
  const Act act = parse_act(act_name);
  TORCH_CHECK(x_in.dim() == 3 && w_in.dim() == 2 && u_in.dim() == 3 && v_in.dim() == 3,
              "mumo_fast.linear_lowrank_fwd: expected x [T,N,IN], weight [OUT,IN], "
              "u [T,R,IN], v [T,R,OUT]");
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t T = x.size(0), N = x.size(1), I = x.size(2), O = w.size(0);
  TORCH_CHECK(w.size(1) == I && u_in.size(0) == T && u_in.size(2) == I && v_in.size(0) == T &&
                  v_in.size(1) == u_in.size(1) && v_in.size(2) == O,
              "mumo_fast.linear_lowrank_fwd: inconsistent shapes x ", x.sizes(), " weight ",
              w.sizes(), " u ", u_in.sizes(), " v ", v_in.sizes());
  check_vectors(x, T, O, bias, gamma, beta);
  at::Tensor z = at::mm(x.view({T * N, I}), w.t()).view({T, N, O});
  z.baddbmm_(at::bmm(x, u_in.transpose(1, 2)), v_in);
  return finish(z, contig(bias), contig(gamma), contig(beta), act);
}

TORCH_LIBRARY_IMPL(mumo_fast, CPU, m) {
  m.impl("linear_fwd", &linear_fwd);
  m.impl("linear_lowrank_fwd", &linear_lowrank_fwd);
}

}  // namespace mumo_fast
