// Shared helpers of the CPU kernels: activation codes, optional per-channel
// vectors, and the fused FiLM epilogue declarations (epilogue.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

namespace mumo_fast {

enum class Act : int { None = 0, Relu = 1, Tanh = 2, Sigmoid = 3 };

inline Act parse_act(c10::string_view s) {
  if (s == "none") return Act::None;
  if (s == "relu") return Act::Relu;
  if (s == "tanh") return Act::Tanh;
  if (s == "sigmoid") return Act::Sigmoid;
  TORCH_CHECK(false, "mumo_fast: activation must be none|relu|tanh|sigmoid, got ", std::string(s));
}

// d act(u) / du written as a function of y = act(u). Kernels take the activation
// as a template argument (see dispatch_act) so that this folds to branch-free code.
template <typename scalar_t>
inline scalar_t act_grad_from_y(scalar_t y, Act a) {
  switch (a) {
    case Act::Relu:
      return scalar_t(y > scalar_t(0));  // no branch: random signs mispredict
    case Act::Tanh:
      return scalar_t(1) - y * y;
    case Act::Sigmoid:
      return y * (scalar_t(1) - y);
    default:
      return scalar_t(1);
  }
}

template <Act A>
using ActTag = std::integral_constant<Act, A>;

// Calls f(ActTag<A>{}) with the activation as a compile-time constant.
template <typename F>
inline void dispatch_act(Act a, F&& f) {
  switch (a) {
    case Act::Relu:
      return f(ActTag<Act::Relu>{});
    case Act::Tanh:
      return f(ActTag<Act::Tanh>{});
    case Act::Sigmoid:
      return f(ActTag<Act::Sigmoid>{});
    default:
      return f(ActTag<Act::None>{});
  }
}

// gy * act'(u), from y = act(u). For relu a select, which vectorises (a bool->float
// product or a branch does not, and random signs mispredict).
template <typename scalar_t>
inline scalar_t apply_act_grad(scalar_t gy, scalar_t y, Act a) {
  if (a == Act::Relu) return y > scalar_t(0) ? gy : scalar_t(0);
  return gy * act_grad_from_y(y, a);
}

template <typename scalar_t>
inline scalar_t relu(scalar_t u) {
  return std::max(u, scalar_t(0));  // NaN propagates, as torch.relu
}

constexpr int64_t kSmallS = 16;    // below this spatial size, kernels work task by task
constexpr int64_t kFlushRows = 16;  // rows summed in the input dtype before a double flush
constexpr int kLanes = 8;           // independent partial sums along a row
constexpr int64_t kTasksPerThread = 4;  // tasks per thread for task-major work split

// Work items per parallel chunk when each item touches `per_item` elements: at
// least 32768 elements per chunk (ATen's own GRAIN_SIZE), so that small tensors
// never pay for a parallel region.
inline int64_t grain_for(int64_t per_item) {
  return std::max<int64_t>(1, int64_t(32768) / std::max<int64_t>(per_item, 1));
}

// A [T, C] vector argument that may be absent: data pointer, or a row of `fill`
// values shared by every task (so that the inner loops stay branch-free).
template <typename scalar_t>
struct ChannelVec {
  const scalar_t* ptr;
  int64_t task_stride;
  std::vector<scalar_t> fill_buf;

  ChannelVec(const c10::optional<at::Tensor>& v, int64_t C, scalar_t fill) {
    if (v.has_value() && v->defined()) {
      ptr = v->data_ptr<scalar_t>();
      task_stride = C;
    } else {
      fill_buf.assign(static_cast<size_t>(C), fill);
      ptr = fill_buf.data();
      task_stride = 0;
    }
  }
  const scalar_t* row(int64_t t) const { return ptr + t * task_stride; }
};

inline c10::optional<at::Tensor> contig(const c10::optional<at::Tensor>& v) {
  if (v.has_value() && v->defined()) return v->contiguous();
  return c10::nullopt;
}

// Checks an optional [T, C] vector argument (dtype and shape), naming it in the error.
void check_channel_vector(const c10::optional<at::Tensor>& v, const char* name,
                          const at::Tensor& like, int64_t T, int64_t C);

// z = in + bias and y = act(z * gamma + beta) for tasks [t0, t0 + tcount) of the
// contiguous [T, N, C, S] tensors z, y. `in` holds those tasks' pre-bias values,
// addressed as in[(t - t0) * in_st + n * in_sn + c * S + s]; it may alias z.
void epilogue_fwd_into(const at::Tensor& in, int64_t in_st, int64_t in_sn, int64_t t0,
                       int64_t tcount, at::Tensor& z, at::Tensor& y,
                       const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& gamma,
                       const c10::optional<at::Tensor>& beta, Act act);

// Activations that are not fused into the passes (tanh, sigmoid) are applied
// in place afterwards with ATen's vectorised kernels.
void finish_activation(at::Tensor& y, Act act);

}  // namespace mumo_fast
