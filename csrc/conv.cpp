// conv_fwd: convolution through ATen, then the fused epilogue writing z and y.
// Per-task weights: a loop over tasks (one conv per task, the epilogue straight from its
// output). Measured on the 2-core Xeon of BENCHMARKS.md (torch 2.13, 1 thread, T=32,
// N=80, 3x3 stride 2), the loop beat one grouped convolution ([N, T*C, H, W], groups=T,
// which also pays two transposing copies) at every Omniglot shape: forward 1->64 at
// 28x28 297-472 vs 518 ms, 64->64 at 14x14 231 vs 527 ms, 7x7 51 vs 124 ms, 4x4 17-20 vs
// 21-23 ms. Shared weights: the same loop, or one convolution over all T*N images for
// small outputs (kSharedLoopMinPositions).
#include <torch/library.h>

#include "common.h"

namespace mumo_fast {

namespace {

// Shared weights: one conv over all T*N images, then the epilogue over its output, or
// the same loop over tasks as per-task weights (the epilogue then reads each task's
// output while it is in cache). Measured as above (fwd, 1 thread): the
// loop 135 vs 177 ms at 14x14 outputs, 79 vs 124 at 7x7; one call 22.5 vs 24.9 at 4x4,
// 6.1 vs 8.6 at 2x2.
constexpr int64_t kSharedLoopMinPositions = 32;

}  // namespace

std::tuple<at::Tensor, at::Tensor> conv_fwd(const at::Tensor& x_in, const at::Tensor& w_in,
                                            const c10::optional<at::Tensor>& bias_in,
                                            const c10::optional<at::Tensor>& gamma_in,
                                            const c10::optional<at::Tensor>& beta_in,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            c10::string_view act_name) {
  const Act act = parse_act(act_name);
  TORCH_CHECK(x_in.dim() == 5, "mumo_fast.conv_fwd: x must be [T, N, C, H, W], got ",
              x_in.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2,
              "mumo_fast.conv_fwd: stride and padding must be pairs");
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t T = x.size(0), N = x.size(1), C = x.size(2), H = x.size(3), W = x.size(4);
  const bool per_task = w.dim() == 5;
  TORCH_CHECK((w.dim() == 4 && w.size(1) == C) ||
                  (per_task && w.size(0) == T && w.size(2) == C),
              "mumo_fast.conv_fwd: weight must be [", T, ", O, ", C, ", KH, KW] or [O, ", C,
              ", KH, KW], got ", w.sizes());
  const int64_t O = per_task ? w.size(1) : w.size(0);
  const int64_t KH = w.size(-2), KW = w.size(-1);
  const int64_t HO = (H + 2 * padding[0] - KH) / stride[0] + 1;
  const int64_t WO = (W + 2 * padding[1] - KW) / stride[1] + 1;
  const int64_t S = HO * WO;
  check_channel_vector(bias_in, "bias", x, T, O);
  check_channel_vector(gamma_in, "gamma", x, T, O);
  check_channel_vector(beta_in, "beta", x, T, O);
  const auto bias = contig(bias_in), gamma = contig(gamma_in), beta = contig(beta_in);

  if (!per_task && S < kSharedLoopMinPositions) {
    at::Tensor z = at::conv2d(x.view({T * N, C, H, W}), w, {}, stride, padding).contiguous();
    at::Tensor z4 = z.view({T, N, O, S});
    at::Tensor y4 = at::empty_like(z4);
    epilogue_fwd_into(z4, N * O * S, O * S, 0, T, z4, y4, bias, gamma, beta, act);
    finish_activation(y4, act);
    return {y4.view({T, N, O, HO, WO}), z.view({T, N, O, HO, WO})};
  }

  at::Tensor z4 = at::empty({T, N, O, S}, x.options());
  at::Tensor y4 = at::empty({T, N, O, S}, x.options());
  for (int64_t t = 0; t < T; ++t) {
    at::Tensor out =
        at::conv2d(x[t], per_task ? w[t] : w, {}, stride, padding).contiguous();  // [N,O,HO,WO]
    epilogue_fwd_into(out, 0, O * S, t, 1, z4, y4, bias, gamma, beta, act);
  }
  finish_activation(y4, act);
  return {y4.view({T, N, O, HO, WO}), z4.view({T, N, O, HO, WO})};
}

TORCH_LIBRARY_IMPL(mumo_fast, CPU, m) { m.impl("conv_fwd", &conv_fwd); }

}  // namespace mumo_fast
