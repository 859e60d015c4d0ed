// bn_fwd / bn_bwd: per-task per-channel batch norm with FiLM and activation,
// layout [T, N, C, S]. Each (task, channel) plane, or each whole task when S is
// small, is processed while it is hot in cache: statistics (shifted sums in
// double) then the apply pass; in the backward, the two reductions then dx.
#include <torch/library.h>

#include "common.h"

namespace mumo_fast {

namespace {

using acc_t = double;

struct Coef {
  acc_t w, b, g, be;
};

template <typename scalar_t>
inline Coef coef(const ChannelVec<scalar_t>& w, const ChannelVec<scalar_t>& b,
                 const ChannelVec<scalar_t>& g, const ChannelVec<scalar_t>& be, int64_t t,
                 int64_t c) {
  return {acc_t(w.row(t)[c]), acc_t(b.row(t)[c]), acc_t(g.row(t)[c]), acc_t(be.row(t)[c])};
}

template <typename scalar_t, bool kRelu>
inline scalar_t affine_act(scalar_t x, scalar_t mean, scalar_t a, scalar_t b) {
  const scalar_t u = (x - mean) * a + b;
  return kRelu ? relu(u) : u;
}

// Statistics are sums of (x - shift), shift = the plane's first value, which keeps
// the one-pass variance free of cancellation; partial sums in scalar_t over at most
// kFlushRows rows (task-major) or one row (plane-major), totals in double.
template <typename scalar_t, bool kRelu>
void bn_fwd_kernel(const scalar_t* x, scalar_t* y, scalar_t* mean_out, scalar_t* rstd_out,
                   int64_t T, int64_t N, int64_t C, int64_t S, double eps,
                   const ChannelVec<scalar_t>& w, const ChannelVec<scalar_t>& b,
                   const ChannelVec<scalar_t>& g, const ChannelVec<scalar_t>& be) {
  const acc_t m = acc_t(N * S);
  auto stats = [&](int64_t t, int64_t c, acc_t shift, acc_t s1, acc_t s2, scalar_t& a_out,
                   scalar_t& b_out) {
    const acc_t mu = s1 / m;
    const acc_t var = std::max(s2 / m - mu * mu, acc_t(0));
    const acc_t rstd = 1.0 / std::sqrt(var + eps);
    mean_out[t * C + c] = scalar_t(shift + mu);
    rstd_out[t * C + c] = scalar_t(rstd);
    const Coef k = coef(w, b, g, be, t, c);
    a_out = scalar_t(rstd * k.w * k.g);
    b_out = scalar_t(k.b * k.g + k.be);
  };
  if (S < kSmallS) {
    at::parallel_for(0, T, grain_for(N * C * S), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> s1(C), s2(C);
      std::vector<scalar_t> p1(C), p2(C), shift(C), a(C), bb(C), mu(C);
      for (int64_t t = begin; t < end; ++t) {
        const scalar_t* xt = x + t * N * C * S;
        scalar_t* yt = y + t * N * C * S;
        std::fill(s1.begin(), s1.end(), acc_t(0));
        std::fill(s2.begin(), s2.end(), acc_t(0));
        for (int64_t c = 0; c < C; ++c) shift[c] = xt[c * S];
        for (int64_t n0 = 0; n0 < N; n0 += kFlushRows) {
          std::fill(p1.begin(), p1.end(), scalar_t(0));
          std::fill(p2.begin(), p2.end(), scalar_t(0));
          for (int64_t n = n0; n < std::min(N, n0 + kFlushRows); ++n) {
            const scalar_t* xr = xt + n * C * S;
            for (int64_t c = 0; c < C; ++c) {
              const scalar_t k = shift[c];
              scalar_t a1 = 0, a2 = 0;
              for (int64_t s = 0; s < S; ++s) {
                const scalar_t d = xr[c * S + s] - k;
                a1 += d;
                a2 += d * d;
              }
              p1[c] += a1;
              p2[c] += a2;
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            s1[c] += p1[c];
            s2[c] += p2[c];
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          stats(t, c, shift[c], s1[c], s2[c], a[c], bb[c]);
          mu[c] = mean_out[t * C + c];
        }
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t c = 0; c < C; ++c) {
            const int64_t off = (n * C + c) * S;
            for (int64_t s = 0; s < S; ++s)
              yt[off + s] = affine_act<scalar_t, kRelu>(xt[off + s], mu[c], a[c], bb[c]);
          }
        }
      }
    });
    return;
  }
  at::parallel_for(0, T * C, grain_for(N * S), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t t = p / C, c = p % C;
      const int64_t base = (t * N * C + c) * S, nstride = C * S;
      const scalar_t k = x[base];
      acc_t r1 = 0, r2 = 0;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* xp = x + base + n * nstride;
        scalar_t l1[kLanes] = {0}, l2[kLanes] = {0};
        int64_t s = 0;
        for (; s + kLanes <= S; s += kLanes) {
          for (int l = 0; l < kLanes; ++l) {
            const scalar_t d = xp[s + l] - k;
            l1[l] += d;
            l2[l] += d * d;
          }
        }
        for (; s < S; ++s) {
          const acc_t d = acc_t(xp[s] - k);
          r1 += d;
          r2 += d * d;
        }
        for (int l = 0; l < kLanes; ++l) {
          r1 += l1[l];
          r2 += l2[l];
        }
      }
      scalar_t a, bb;
      stats(t, c, acc_t(k), r1, r2, a, bb);
      const scalar_t mu = mean_out[p];
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* xp = x + base + n * nstride;
        scalar_t* yp = y + base + n * nstride;
        for (int64_t s = 0; s < S; ++s) yp[s] = affine_act<scalar_t, kRelu>(xp[s], mu, a, bb);
      }
    }
  });
}

// With du = gy * act'(y), xhat = (x - mean) * rstd, S0 = sum du, S1 = sum du*xhat:
// dx = rstd*g*w * (du - S0/m - xhat*S1/m), dweight = g*S1, dbias = g*S0,
// dgamma = w*S1 + b*S0, dbeta = S0.
template <typename scalar_t, Act act>
void bn_bwd_kernel(const scalar_t* gy, const scalar_t* x, const scalar_t* y,
                   const scalar_t* mean, const scalar_t* rstd, scalar_t* dx, int64_t T,
                   int64_t N, int64_t C, int64_t S, const ChannelVec<scalar_t>& w,
                   const ChannelVec<scalar_t>& b, const ChannelVec<scalar_t>& g, scalar_t* dweight,
                   scalar_t* dbias, scalar_t* dgamma, scalar_t* dbeta) {
  const acc_t m = acc_t(N * S);
  auto outputs = [&](int64_t t, int64_t c, acc_t s0, acc_t s1, scalar_t& k, scalar_t& c0,
                     scalar_t& c1) {
    const int64_t i = t * C + c;
    const acc_t wv = w.row(t)[c], bv = b.row(t)[c], gv = g.row(t)[c];
    dweight[i] = scalar_t(gv * s1);
    dbias[i] = scalar_t(gv * s0);
    dgamma[i] = scalar_t(wv * s1 + bv * s0);
    dbeta[i] = scalar_t(s0);
    k = scalar_t(acc_t(rstd[i]) * gv * wv);
    c0 = scalar_t(s0 / m);
    c1 = scalar_t(s1 / m);
  };
  if (S < kSmallS) {
    at::parallel_for(0, T, grain_for(N * C * S), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> s0(C), s1(C);
      std::vector<scalar_t> p0(C), p1(C), kk(C), c0(C), c1(C);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t tb = t * N * C * S;
        std::fill(s0.begin(), s0.end(), acc_t(0));
        std::fill(s1.begin(), s1.end(), acc_t(0));
        const scalar_t* mu = mean + t * C;
        const scalar_t* rs = rstd + t * C;
        for (int64_t n0 = 0; n0 < N; n0 += kFlushRows) {
          std::fill(p0.begin(), p0.end(), scalar_t(0));
          std::fill(p1.begin(), p1.end(), scalar_t(0));
          for (int64_t n = n0; n < std::min(N, n0 + kFlushRows); ++n) {
            for (int64_t c = 0; c < C; ++c) {
              const int64_t off = tb + (n * C + c) * S;
              scalar_t a0 = 0, a1 = 0;
              for (int64_t s = 0; s < S; ++s) {
                const scalar_t gv = gy[off + s], yv = y[off + s], xv = x[off + s];
                const scalar_t du = apply_act_grad(gv, yv, act);
                const scalar_t xh = (xv - mu[c]) * rs[c];
                a0 += du;
                a1 += du * xh;
              }
              p0[c] += a0;
              p1[c] += a1;
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            s0[c] += p0[c];
            s1[c] += p1[c];
          }
        }
        for (int64_t c = 0; c < C; ++c) outputs(t, c, s0[c], s1[c], kk[c], c0[c], c1[c]);
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t c = 0; c < C; ++c) {
            const int64_t off = tb + (n * C + c) * S;
            for (int64_t s = 0; s < S; ++s) {
              const scalar_t gv = gy[off + s], yv = y[off + s], xv = x[off + s];
              const scalar_t du = apply_act_grad(gv, yv, act);
              const scalar_t xh = (xv - mu[c]) * rs[c];
              dx[off + s] = kk[c] * (du - c0[c] - xh * c1[c]);
            }
          }
        }
      }
    });
    return;
  }
  at::parallel_for(0, T * C, grain_for(N * S), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t t = p / C, c = p % C;
      const int64_t base = (t * N * C + c) * S, nstride = C * S;
      const scalar_t mu = mean[p], rs = rstd[p];
      acc_t r0 = 0, r1 = 0;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t off = base + n * nstride;
        scalar_t l0[kLanes] = {0}, l1[kLanes] = {0};
        int64_t s = 0;
        for (; s + kLanes <= S; s += kLanes) {
          for (int l = 0; l < kLanes; ++l) {
            const scalar_t gv = gy[off + s + l], yv = y[off + s + l], xv = x[off + s + l];
            const scalar_t du = apply_act_grad(gv, yv, act);
            const scalar_t xh = (xv - mu) * rs;
            l0[l] += du;
            l1[l] += du * xh;
          }
        }
        for (; s < S; ++s) {
          const scalar_t du = apply_act_grad(gy[off + s], y[off + s], act);
          const scalar_t xh = (x[off + s] - mu) * rs;
          r0 += du;
          r1 += acc_t(du) * acc_t(xh);
        }
        for (int l = 0; l < kLanes; ++l) {
          r0 += l0[l];
          r1 += l1[l];
        }
      }
      scalar_t k, c0, c1;
      outputs(t, c, r0, r1, k, c0, c1);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t off = base + n * nstride;
        for (int64_t s = 0; s < S; ++s) {
          const scalar_t gv = gy[off + s], yv = y[off + s], xv = x[off + s];
          const scalar_t du = apply_act_grad(gv, yv, act);
          const scalar_t xh = (xv - mu) * rs;
          dx[off + s] = k * (du - c0 - xh * c1);
        }
      }
    }
  });
}

void check_x4(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4, "mumo_fast.", op, ": x must be [T, N, C, S], got ", x.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_fwd(const at::Tensor& x_in,
                                                      const c10::optional<at::Tensor>& w_in,
                                                      const c10::optional<at::Tensor>& b_in,
                                                      const c10::optional<at::Tensor>& g_in,
                                                      const c10::optional<at::Tensor>& be_in,
                                                      double eps, c10::string_view act_name) {
  const Act act = parse_act(act_name);
  check_x4(x_in, "bn_fwd");
  const at::Tensor x = x_in.contiguous();
  const int64_t T = x.size(0), N = x.size(1), C = x.size(2), S = x.size(3);
  check_channel_vector(w_in, "weight", x, T, C);
  check_channel_vector(b_in, "bias", x, T, C);
  check_channel_vector(g_in, "gamma", x, T, C);
  check_channel_vector(be_in, "beta", x, T, C);
  const auto w = contig(w_in), b = contig(b_in), g = contig(g_in), be = contig(be_in);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({T, C}, x.options());
  at::Tensor rstd = at::empty({T, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mumo_fast_bn_fwd", [&] {
    ChannelVec<scalar_t> wv(w, C, 1), bv(b, C, 0), gv(g, C, 1), bev(be, C, 0);
    auto* xp = x.data_ptr<scalar_t>();
    auto* yp = y.data_ptr<scalar_t>();
    if (act == Act::Relu) {
      bn_fwd_kernel<scalar_t, true>(xp, yp, mean.data_ptr<scalar_t>(),
                                    rstd.data_ptr<scalar_t>(), T, N, C, S, eps, wv, bv, gv, bev);
    } else {
      bn_fwd_kernel<scalar_t, false>(xp, yp, mean.data_ptr<scalar_t>(),
                                     rstd.data_ptr<scalar_t>(), T, N, C, S, eps, wv, bv, gv, bev);
    }
  });
  finish_activation(y, act);
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_bwd(
    const at::Tensor& gy_in, const at::Tensor& x_in, const at::Tensor& y_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, const c10::optional<at::Tensor>& w_in,
    const c10::optional<at::Tensor>& b_in, const c10::optional<at::Tensor>& g_in,
    c10::string_view act_name) {
  const Act act = parse_act(act_name);
  check_x4(x_in, "bn_bwd");
  TORCH_CHECK(gy_in.sizes() == x_in.sizes() && y_in.sizes() == x_in.sizes(),
              "mumo_fast.bn_bwd: gy, x, y must have the same shape");
  const at::Tensor gy = gy_in.contiguous(), x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t T = x.size(0), N = x.size(1), C = x.size(2), S = x.size(3);
  check_channel_vector(mean_in, "mean", x, T, C);
  check_channel_vector(rstd_in, "rstd", x, T, C);
  check_channel_vector(w_in, "weight", x, T, C);
  check_channel_vector(b_in, "bias", x, T, C);
  check_channel_vector(g_in, "gamma", x, T, C);
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const auto w = contig(w_in), b = contig(b_in), g = contig(g_in);
  at::Tensor dx = at::empty_like(x);
  auto tc = [&] { return at::empty({T, C}, x.options()); };
  at::Tensor dweight = tc(), dbias = tc(), dgamma = tc(), dbeta = tc();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mumo_fast_bn_bwd", [&] {
    ChannelVec<scalar_t> wv(w, C, 1), bv(b, C, 0), gv(g, C, 1);
    dispatch_act(act, [&](auto tag) {
      bn_bwd_kernel<scalar_t, decltype(tag)::value>(
          gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
          mean.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), T, N, C,
          S, wv, bv, gv, dweight.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>(),
          dgamma.data_ptr<scalar_t>(), dbeta.data_ptr<scalar_t>());
    });
  });
  return {dx, dweight, dbias, dgamma, dbeta};
}

TORCH_LIBRARY_IMPL(mumo_fast, CPU, m) {
  m.impl("bn_fwd", &bn_fwd);
  m.impl("bn_bwd", &bn_bwd);
}

}  // namespace mumo_fast
