// conv_bwd_per_task: input and weight gradients of z = conv(x, weight[t]) for
// per-task weights, task by task, written straight into the [T, ...] outputs while
// each task's result is still in cache (a torch.stack of per-task results afterwards
// cost ~10% of film_conv2d's forward+backward at 7x7).
// Two routes for each gradient, chosen by the number of output positions P = HO*WO
// (thresholds from measurements, in mumo_fast/ops/backends/cpp.py):
// * im2col + GEMM, over chunks of images:
//     cols [n*P, KH*KW*C] = im2col(x[t] chunk)  (channels-last order: runs of C values)
//     dzt  [n*P, O]       = dz[t] chunk, one row of O gradients per output position
//     dw[t] += dzt^T cols,  dx[t] chunk = col2im(dzt weight[t]);
//   one large GEMM instead of oneDNN's backward, whose fixed cost per call dominates at
//   small outputs (and whose input gradient was slower at every Omniglot shape);
// * at::convolution_backward (oneDNN).
// Dilation 1, groups 1 (the ops API's only convolution).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

namespace mumo_fast {

namespace {

constexpr int64_t kChunkRows = 256;

struct Geometry {
  int64_t N, C, H, W, O, KH, KW, HO, WO, SH, SW, PH, PW;
  int64_t P() const { return HO * WO; }
  int64_t K() const { return KH * KW * C; }
};

// Channels-last im2col: x_cl is [N, H, W, C];
// cols[(n*HO + oh)*WO + ow][(kh*KW + kw)*C + c] = x_cl[n][oh*SH - PH + kh][ow*SW - PW + kw][c]
// (0 outside the image), so that every (kh, kw) block is one contiguous run of C values.
template <typename scalar_t>
void im2col_cl(const scalar_t* x_cl, scalar_t* cols, const Geometry& g) {
  const int64_t C = g.C;
  for (int64_t n = 0; n < g.N; ++n) {
    const scalar_t* xn = x_cl + n * g.H * g.W * C;
    for (int64_t oh = 0; oh < g.HO; ++oh) {
      for (int64_t ow = 0; ow < g.WO; ++ow) {
        scalar_t* dst = cols + ((n * g.HO + oh) * g.WO + ow) * g.K();
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t ih = oh * g.SH - g.PH + kh;
          for (int64_t kw = 0; kw < g.KW; ++kw, dst += C) {
            const int64_t iw = ow * g.SW - g.PW + kw;
            if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
              const scalar_t* src = xn + (ih * g.W + iw) * C;
              for (int64_t c = 0; c < C; ++c) dst[c] = src[c];
            } else {
              for (int64_t c = 0; c < C; ++c) dst[c] = scalar_t(0);
            }
          }
        }
      }
    }
  }
}

// The adjoint of im2col_cl: dx_cl [N, H, W, C] (zeroed here) accumulates every dcols
// entry at the place im2col_cl read it from.
template <typename scalar_t>
void col2im_cl(const scalar_t* dcols, scalar_t* dx_cl, const Geometry& g) {
  const int64_t C = g.C;
  std::fill(dx_cl, dx_cl + g.N * g.H * g.W * C, scalar_t(0));
  for (int64_t n = 0; n < g.N; ++n) {
    scalar_t* dxn = dx_cl + n * g.H * g.W * C;
    for (int64_t oh = 0; oh < g.HO; ++oh) {
      for (int64_t ow = 0; ow < g.WO; ++ow) {
        const scalar_t* src = dcols + ((n * g.HO + oh) * g.WO + ow) * g.K();
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t ih = oh * g.SH - g.PH + kh;
          for (int64_t kw = 0; kw < g.KW; ++kw, src += C) {
            const int64_t iw = ow * g.SW - g.PW + kw;
            if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
              scalar_t* dst = dxn + (ih * g.W + iw) * C;
              for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
            }
          }
        }
      }
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> conv_bwd_per_task(
    const at::Tensor& dz_in, const at::Tensor& x_in, const at::Tensor& w_in,
    at::IntArrayRef stride, at::IntArrayRef padding, bool need_x, bool need_w,
    int64_t dx_im2col_max_positions, int64_t dw_im2col_max_positions) {
  TORCH_CHECK(x_in.dim() == 5 && w_in.dim() == 5 && dz_in.dim() == 5,
              "mumo_fast.conv_bwd_per_task: dz, x and weight must be 5-D ([T, N, O, HO, WO], "
              "[T, N, C, H, W], [T, O, C, KH, KW]), got ",
              dz_in.sizes(), ", ", x_in.sizes(), ", ", w_in.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2,
              "mumo_fast.conv_bwd_per_task: stride and padding must be pairs");
  // detached: a raw op (the autograd Functions differentiate it), and the out= GEMMs
  // refuse inputs that require grad, which a NoGradGuard here did not prevent (the im2col
  // route runs in at::parallel_for's worker threads; grad mode is thread-local)
  const at::Tensor x = x_in.detach().contiguous(), w = w_in.detach().contiguous(),
                   dz = dz_in.detach().contiguous();
  const int64_t T = x.size(0);
  Geometry g{x.size(1), x.size(2), x.size(3), x.size(4), w.size(1), w.size(3), w.size(4),
             dz.size(3), dz.size(4), stride[0], stride[1], padding[0], padding[1]};
  TORCH_CHECK(w.size(0) == T && w.size(2) == g.C && dz.size(0) == T && dz.size(1) == g.N &&
                  dz.size(2) == g.O,
              "mumo_fast.conv_bwd_per_task: shapes do not match: dz ", dz.sizes(), ", x ",
              x.sizes(), ", weight ", w.sizes());
  TORCH_CHECK(g.HO == (g.H + 2 * g.PH - g.KH) / g.SH + 1 &&
                  g.WO == (g.W + 2 * g.PW - g.KW) / g.SW + 1,
              "mumo_fast.conv_bwd_per_task: dz's spatial size ", dz.sizes(),
              " is not the convolution's output size");
  at::Tensor dx = need_x ? at::empty_like(x) : at::Tensor();
  at::Tensor dw = need_w ? at::empty_like(w) : at::Tensor();
  const int64_t P = g.P(), K = g.K(), rows = g.N * P;
  // im2col needs a GEMM-able floating type; other dtypes take aten's route throughout
  const bool i2c_dtype = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  const bool x_i2c = need_x && i2c_dtype && P <= dx_im2col_max_positions;
  const bool w_i2c = need_w && i2c_dtype && P <= dw_im2col_max_positions;
  const std::array<bool, 3> aten_mask{need_x && !x_i2c, need_w && !w_i2c, false};
  if (aten_mask[0] || aten_mask[1]) {
    // serial: oneDNN parallelises each call itself (and spun without end when called
    // from inside at::parallel_for's OpenMP region)
    for (int64_t t = 0; t < T; ++t) {
      auto grads = at::convolution_backward(dz[t], x[t], w[t], c10::nullopt, stride, padding,
                                            {1, 1}, false, {0, 0}, 1, aten_mask);
      if (aten_mask[0]) dx[t].copy_(std::get<0>(grads));
      if (aten_mask[1]) dw[t].copy_(std::get<1>(grads));
    }
  }
  if (!x_i2c && !w_i2c) return {dx, dw};
  // Images in chunks of about kChunkRows GEMM rows, so that a chunk's columns stay in
  // cache between im2col, the GEMMs and col2im.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(g.N, kChunkRows / P));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_bwd_per_task", [&] {
    at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
      const auto opt = x.options();
      at::Tensor cols = at::empty({chunk * P, K}, opt);
      at::Tensor dw_cl = w_i2c ? at::empty({g.O, K}, opt) : at::Tensor();
      at::Tensor dx_cl = x_i2c ? at::empty({g.N, g.H, g.W, g.C}, opt) : at::Tensor();
      for (int64_t t = begin; t < end; ++t) {
        // [N, O, P] -> [N, P, O]: one row of O gradients per output position.
        const at::Tensor dzt = dz[t].view({g.N, g.O, P}).transpose(1, 2).reshape({rows, g.O});
        const at::Tensor x_cl = w_i2c ? x[t].permute({0, 2, 3, 1}).contiguous() : at::Tensor();
        const at::Tensor w_cl =
            x_i2c ? w[t].permute({0, 2, 3, 1}).reshape({g.O, K}) : at::Tensor();
        for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
          Geometry gc = g;
          gc.N = std::min(chunk, g.N - n0);
          const at::Tensor dz_c = dzt.narrow(0, n0 * P, gc.N * P);
          at::Tensor cols_c = cols.narrow(0, 0, gc.N * P);
          if (w_i2c) {
            im2col_cl(x_cl.data_ptr<scalar_t>() + n0 * g.H * g.W * g.C,
                      cols_c.data_ptr<scalar_t>(), gc);
            if (n0 == 0) {
              at::mm_out(dw_cl, dz_c.t(), cols_c);
            } else {
              dw_cl.addmm_(dz_c.t(), cols_c);
            }
          }
          if (x_i2c) {  // cols_c now holds the chunk's column gradients
            at::mm_out(cols_c, dz_c, w_cl);
            col2im_cl(cols_c.data_ptr<scalar_t>(),
                      dx_cl.data_ptr<scalar_t>() + n0 * g.H * g.W * g.C, gc);
          }
        }
        if (w_i2c) dw[t].copy_(dw_cl.view({g.O, g.KH, g.KW, g.C}).permute({0, 3, 1, 2}));
        if (x_i2c) dx[t].copy_(dx_cl.permute({0, 3, 1, 2}));
      }
    });
  });
  return {dx, dw};
}

TORCH_LIBRARY_IMPL(mumo_fast, CPU, m) { m.impl("conv_bwd_per_task", &conv_bwd_per_task); }

}  // namespace mumo_fast
