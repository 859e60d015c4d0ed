// The fused FiLM epilogue: forward (bias + FiLM + activation in one pass writing
// z and y) and its backward (du, dz and the per-task per-channel reductions
// dgamma, dbeta, dbias in the same pass). Layout [T, N, C, S], contiguous.
#include <torch/library.h>

#include <utility>

#include "common.h"

namespace mumo_fast {

void check_channel_vector(const c10::optional<at::Tensor>& v, const char* name,
                          const at::Tensor& like, int64_t T, int64_t C) {
  if (!v.has_value() || !v->defined()) return;
  TORCH_CHECK(v->dim() == 2 && v->size(0) == T && v->size(1) == C, "mumo_fast: ", name,
              " must have shape [", T, ", ", C, "], got ", v->sizes());
  TORCH_CHECK(v->scalar_type() == like.scalar_type(), "mumo_fast: ", name, " must have dtype ",
              like.scalar_type());
  TORCH_CHECK(v->device() == like.device(), "mumo_fast: ", name, " must be on ", like.device());
}

void finish_activation(at::Tensor& y, Act act) {
  if (act == Act::Tanh) y.tanh_();
  if (act == Act::Sigmoid) y.sigmoid_();
}

namespace {


template <typename scalar_t, bool kRelu>
void epilogue_fwd_kernel(const scalar_t* in, int64_t in_st, int64_t in_sn, int64_t t0,
                         int64_t tcount, scalar_t* z, scalar_t* y, int64_t N, int64_t C,
                         int64_t S, const ChannelVec<scalar_t>& bias,
                         const ChannelVec<scalar_t>& gamma, const ChannelVec<scalar_t>& beta) {
  const int64_t row = C * S;
  at::parallel_for(0, tcount * N, grain_for(row), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t tl = r / N, n = r % N, t = t0 + tl;
      const scalar_t* src = in + tl * in_st + n * in_sn;
      scalar_t* zr = z + (t * N + n) * row;
      scalar_t* yr = y + (t * N + n) * row;
      const scalar_t* b = bias.row(t);
      const scalar_t* g = gamma.row(t);
      const scalar_t* be = beta.row(t);
      if (S == 1) {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t v = src[c] + b[c];
          zr[c] = v;
          const scalar_t u = v * g[c] + be[c];
          yr[c] = kRelu ? relu(u) : u;
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t bc = b[c], gc = g[c], bec = be[c];
          const scalar_t* sp = src + c * S;
          scalar_t* zp = zr + c * S;
          scalar_t* yp = yr + c * S;
          for (int64_t s = 0; s < S; ++s) {
            const scalar_t v = sp[s] + bc;
            zp[s] = v;
            const scalar_t u = v * gc + bec;
            yp[s] = kRelu ? relu(u) : u;
          }
        }
      }
    }
  });
}

// One row of S contiguous values: dz = act'(.) * gy * gc, and (sum du, sum du * z) over
// the row, kept in kLanes independent partial sums so that the loop vectorises.
template <typename scalar_t, Act A>
inline std::pair<scalar_t, scalar_t> epilogue_bwd_row(const scalar_t* gy, const scalar_t* y,
                                                      const scalar_t* z, scalar_t* dz,
                                                      int64_t S, scalar_t gc) {
  scalar_t r0 = 0, r1 = 0;
  if (S < kLanes) {  // short rows: the lane arrays would cost more than they save
    for (int64_t s = 0; s < S; ++s) {
      const scalar_t du = apply_act_grad(gy[s], y[s], A);
      dz[s] = du * gc;
      r0 += du;
      r1 += du * z[s];
    }
    return {r0, r1};
  }
  scalar_t a0[kLanes] = {0}, a1[kLanes] = {0};
  int64_t s = 0;
  for (; s + kLanes <= S; s += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const scalar_t du = apply_act_grad(gy[s + l], y[s + l], A);
      dz[s + l] = du * gc;
      a0[l] += du;
      a1[l] += du * z[s + l];
    }
  }
  for (; s < S; ++s) {
    const scalar_t du = apply_act_grad(gy[s], y[s], A);
    dz[s] = du * gc;
    r0 += du;
    r1 += du * z[s];
  }
  for (int l = 0; l < kLanes; ++l) {
    r0 += a0[l];
    r1 += a1[l];
  }
  return {r0, r1};
}

// Backward. Per (t, c): Sdu = sum du, Sduz = sum du*z over N and S; then
// dgamma = Sduz, dbeta = Sdu, dbias = gamma * Sdu (= sum dz). Partial sums are kept
// in scalar_t over at most kFlushRows rows (so the loops vectorise) and added into
// double accumulators.
template <typename scalar_t, Act A>
void epilogue_bwd_kernel(const scalar_t* gy, const scalar_t* y, const scalar_t* z, scalar_t* dz,
                         int64_t T, int64_t N, int64_t C, int64_t S,
                         const ChannelVec<scalar_t>& gamma, scalar_t* dgamma, scalar_t* dbeta,
                         scalar_t* dbias) {
  using acc_t = double;
  if (S < kSmallS || T >= at::get_num_threads() * kTasksPerThread) {
    // Task-major: one task per step, rows of C * S contiguous values, per-channel
    // accumulators (plane-major below strides by C * S between the rows of a plane,
    // which measured ~4x slower at [32, 80, 64, 16]; it is kept for few tasks, where
    // tasks alone would not keep the threads busy).
    at::parallel_for(0, T, grain_for(N * C * S), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sdu(C), sduz(C);
      std::vector<scalar_t> pdu(C), pduz(C);
      acc_t* sd = sdu.data();
      acc_t* sz = sduz.data();
      scalar_t* pd = pdu.data();
      scalar_t* pz = pduz.data();
      for (int64_t t = begin; t < end; ++t) {
        std::fill(sdu.begin(), sdu.end(), acc_t(0));
        std::fill(sduz.begin(), sduz.end(), acc_t(0));
        const scalar_t* g = gamma.row(t);
        for (int64_t n0 = 0; n0 < N; n0 += kFlushRows) {
          std::fill(pdu.begin(), pdu.end(), scalar_t(0));
          std::fill(pduz.begin(), pduz.end(), scalar_t(0));
          for (int64_t n = n0; n < std::min(N, n0 + kFlushRows); ++n) {
            const int64_t off = (t * N + n) * C * S;
            const scalar_t* gyr = gy + off;
            const scalar_t* yr = y + off;
            const scalar_t* zr = z + off;
            scalar_t* dzr = dz + off;
            if (S == 1) {
              for (int64_t c = 0; c < C; ++c) {
                const scalar_t gv = gyr[c], yv = yr[c], zv = zr[c];
                const scalar_t du = apply_act_grad(gv, yv, A);
                dzr[c] = du * g[c];
                pd[c] += du;
                pz[c] += du * zv;
              }
              continue;
            }
            for (int64_t c = 0; c < C; ++c) {
              const auto sums = epilogue_bwd_row<scalar_t, A>(gyr + c * S, yr + c * S,
                                                              zr + c * S, dzr + c * S, S, g[c]);
              pd[c] += sums.first;
              pz[c] += sums.second;
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            sd[c] += pd[c];
            sz[c] += pz[c];
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          dgamma[t * C + c] = scalar_t(sz[c]);
          dbeta[t * C + c] = scalar_t(sd[c]);
          dbias[t * C + c] = scalar_t(acc_t(g[c]) * sd[c]);
        }
      }
    });
    return;
  }
  // Plane-major: one (t, c) plane of N rows of S contiguous values per step.
  at::parallel_for(0, T * C, grain_for(N * S), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t t = p / C, c = p % C;
      const scalar_t gc = gamma.row(t)[c];
      acc_t r0 = 0, r1 = 0;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t off = ((t * N + n) * C + c) * S;
        const auto sums =
            epilogue_bwd_row<scalar_t, A>(gy + off, y + off, z + off, dz + off, S, gc);
        r0 += sums.first;
        r1 += sums.second;
      }
      dgamma[p] = scalar_t(r1);
      dbeta[p] = scalar_t(r0);
      dbias[p] = scalar_t(acc_t(gc) * r0);
    }
  });
}

}  // namespace

void epilogue_fwd_into(const at::Tensor& in, int64_t in_st, int64_t in_sn, int64_t t0,
                       int64_t tcount, at::Tensor& z, at::Tensor& y,
                       const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& gamma,
                       const c10::optional<at::Tensor>& beta, Act act) {
  const int64_t N = z.size(1), C = z.size(2), S = z.size(3);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "mumo_fast_epilogue_fwd", [&] {
    ChannelVec<scalar_t> b(bias, C, scalar_t(0)), g(gamma, C, scalar_t(1));
    ChannelVec<scalar_t> be(beta, C, scalar_t(0));
    const scalar_t* src = in.data_ptr<scalar_t>();
    if (act == Act::Relu) {
      epilogue_fwd_kernel<scalar_t, true>(src, in_st, in_sn, t0, tcount, z.data_ptr<scalar_t>(),
                                          y.data_ptr<scalar_t>(), N, C, S, b, g, be);
    } else {
      epilogue_fwd_kernel<scalar_t, false>(src, in_st, in_sn, t0, tcount,
                                           z.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, C,
                                           S, b, g, be);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> epilogue_bwd(
    const at::Tensor& gy_in, const at::Tensor& y_in, const at::Tensor& z_in,
    const c10::optional<at::Tensor>& gamma_in, c10::string_view act_name) {
  const Act act = parse_act(act_name);
  TORCH_CHECK(z_in.dim() == 4, "mumo_fast.epilogue_bwd: z must be [T, N, C, S], got ",
              z_in.sizes());
  TORCH_CHECK(gy_in.sizes() == z_in.sizes() && y_in.sizes() == z_in.sizes(),
              "mumo_fast.epilogue_bwd: gy, y, z must have the same shape");
  const at::Tensor gy = gy_in.contiguous(), y = y_in.contiguous(), z = z_in.contiguous();
  const int64_t T = z.size(0), N = z.size(1), C = z.size(2), S = z.size(3);
  check_channel_vector(gamma_in, "gamma", z, T, C);
  const auto gamma = contig(gamma_in);
  at::Tensor dz = at::empty_like(z);
  at::Tensor dgamma = at::empty({T, C}, z.options());
  at::Tensor dbeta = at::empty({T, C}, z.options());
  at::Tensor dbias = at::empty({T, C}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "mumo_fast_epilogue_bwd", [&] {
    ChannelVec<scalar_t> g(gamma, C, scalar_t(1));
    dispatch_act(act, [&](auto tag) {
      epilogue_bwd_kernel<scalar_t, decltype(tag)::value>(
          gy.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
          dz.data_ptr<scalar_t>(), T, N, C, S, g, dgamma.data_ptr<scalar_t>(),
          dbeta.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>());
    });
  });
  return {dz, dgamma, dbeta, dbias};
}

TORCH_LIBRARY_IMPL(mumo_fast, CPU, m) { m.impl("epilogue_bwd", &epilogue_bwd); }

}  // namespace mumo_fast
