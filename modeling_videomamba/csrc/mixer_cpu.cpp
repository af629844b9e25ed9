// The bidirectional mixer's element-wise work around the scan, fused for inference on CPU (no autograd;
// modeling_videomamba_blocks.py falls back to its PyTorch expressions whenever a gradient is needed):
//
//   conv_silu  x (B, L, inner), channel stride 1 (a view of in_proj's output), weight (2 inner, K),
//              bias (2 inner,) -> u (B, L, 2 inner) contiguous:
//                u[..., :inner] = silu(causal_conv(x, weight[:inner]) + bias[:inner])
//                u[..., inner:] = silu(causal_conv(flip_L(x), weight[inner:]) + bias[inner:])
//              (the backward direction in its own, flipped time axis, as the scan reads it)
//   gate       y (B, L, 2 inner) contiguous, z (B, L, inner) channel stride 1
//              -> (y[..., :inner] + flip_L(y[..., inner:])) * silu(z)  (B, L, inner) contiguous
//
// One pass each over (batch, token) rows, without the flipped copy, the concatenation and the
// intermediate sums the PyTorch expressions materialise. The taps are summed in the order of
// causal_conv1d_tokens_first (bias + last tap, then the earlier taps), so results differ from
// PyTorch's by rounding only (FMA contraction, this exp against Sleef's).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "packs.h"

namespace {

// n <= lanes values of a pack: whole packs load directly, a channel tail through a zeroed pack.
template <typename P, typename T>
inline P load_n(const T* p, int64_t n) {
  if (n == kLanes<T>) return load<P>(p);
  P v{};
  std::memcpy(&v, p, n * sizeof(T));
  return v;
}

template <typename P, typename T>
inline void store_n(T* p, const P& v, int64_t n) {
  if (n == kLanes<T>) return store(p, v);
  std::memcpy(p, &v, n * sizeof(T));
}

template <typename P> inline P silu(P v) { return v / (1.0f + exp_pack(-v)); }

// f(c, lanes) for each pack of a row's channels: whole packs first, with `lanes` a constant (so the
// loads and stores above fold to plain vector moves), then the tail.
template <typename T, typename F>
inline void for_each_pack(int64_t channels, const F& f) {
  int64_t c = 0;
  for (; c + kLanes<T> <= channels; c += kLanes<T>) f(c, std::integral_constant<int64_t, kLanes<T>>{});
  if (c < channels) f(c, channels - c);
}

// Rows per task: enough channels' work that a task outweighs scheduling it.
inline int64_t grain_rows(int64_t channels) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(channels, 1)); }

// One direction of one output row (its arguments are values, so the compiler keeps them in registers).
// Token t of the direction is token `last` of x, and tap k reads `width - 1 - k` tokens earlier in the
// direction's time: `step` is -token_stride forward and +token_stride for the flipped direction.
template <typename T>
void conv_silu_row(const T* x_last, int64_t step, int64_t available, const T* taps, int64_t tap_stride, const T* bias,
                   int64_t inner, int64_t width, T* out) {
  using P = Pack<T>;
  for_each_pack<T>(inner, [&](int64_t c, auto lanes) {
    const T* xc = x_last + c;
    P acc = load_n<P>(bias + c, lanes) + load_n<P>(taps + (width - 1) * tap_stride + c, lanes) * load_n<P>(xc, lanes);
    for (int64_t k = width - 1 - available; k < width - 1; ++k)
      acc = acc + load_n<P>(taps + k * tap_stride + c, lanes) * load_n<P>(xc + (width - 1 - k) * step, lanes);
    store_n(out + c, silu(acc), lanes);
  });
}

template <typename T>
void conv_silu_kernel(const torch::Tensor& x, const torch::Tensor& taps, const torch::Tensor& bias, torch::Tensor& u) {
  const int64_t batch = x.size(0), length = x.size(1), inner = x.size(2), width = taps.size(0);
  const int64_t batch_stride = x.stride(0), token_stride = x.stride(1);
  const T *xs = x.data_ptr<T>(), *w = taps.data_ptr<T>(), *b = bias.data_ptr<T>();
  T* out = u.data_ptr<T>();
  at::parallel_for(0, batch * length, grain_rows(2 * inner), [&](int64_t first, int64_t end) {
    for (int64_t row = first; row < end; ++row) {
      const int64_t n = row / length, t = row % length;
      for (int64_t direction = 0; direction < 2; ++direction) {
        const int64_t last = direction ? length - 1 - t : t;
        const int64_t available = std::min(width - 1, direction ? length - 1 - last : last);  // taps in range
        conv_silu_row(xs + n * batch_stride + last * token_stride, direction ? token_stride : -token_stride,
                      available, w + direction * inner, 2 * inner, b + direction * inner, inner, width,
                      out + (row * 2 + direction) * inner);
      }
    }
  });
}

// One output row of the gate: (forward + backward) * silu(z), all (inner,) rows.
template <typename T>
void gate_row(const T* forward, const T* backward, const T* z, int64_t inner, T* out) {
  using P = Pack<T>;
  for_each_pack<T>(inner, [&](int64_t c, auto lanes) {
    const P sum = load_n<P>(forward + c, lanes) + load_n<P>(backward + c, lanes);
    store_n(out + c, sum * silu(load_n<P>(z + c, lanes)), lanes);
  });
}

template <typename T>
void gate_kernel(const torch::Tensor& y, const torch::Tensor& z, torch::Tensor& gated) {
  const int64_t batch = z.size(0), length = z.size(1), inner = z.size(2);
  const int64_t batch_stride = z.stride(0), token_stride = z.stride(1);
  const T *ys = y.data_ptr<T>(), *zs = z.data_ptr<T>();
  T* out = gated.data_ptr<T>();
  at::parallel_for(0, batch * length, grain_rows(inner), [&](int64_t first, int64_t end) {
    for (int64_t row = first; row < end; ++row) {
      const int64_t n = row / length, t = row % length;
      gate_row(ys + row * 2 * inner, ys + (n * length + length - 1 - t) * 2 * inner + inner,
               zs + n * batch_stride + t * token_stride, inner, out + row * inner);
    }
  });
}

// x's channels must be adjacent (stride 1); its other strides are free. A copy only when they are not.
torch::Tensor channels_adjacent(const torch::Tensor& x) { return x.stride(2) == 1 ? x : x.contiguous(); }

torch::Tensor conv_silu(const torch::Tensor& x_in, const torch::Tensor& weight, const torch::Tensor& bias) {
  TORCH_CHECK(x_in.dim() == 3 && x_in.device().is_cpu(), "mixer conv_silu: x must be a (B, L, inner) CPU tensor");
  const int64_t inner = x_in.size(2);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == 2 * inner && weight.size(1) >= 1 && bias.dim() == 1 &&
                  bias.size(0) == 2 * inner,
              "mixer conv_silu: weight must be (2 inner, K) and bias (2 inner,)");
  TORCH_CHECK(weight.scalar_type() == x_in.scalar_type() && bias.scalar_type() == x_in.scalar_type(),
              "mixer conv_silu: x, weight and bias must share a dtype");
  const auto x = channels_adjacent(x_in);
  const auto taps = weight.t().contiguous();  // (K, 2 inner): each tap a contiguous channel vector
  const auto b = bias.contiguous();
  auto u = x.new_empty({x.size(0), x.size(1), 2 * inner});
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixer_conv_silu", [&] { conv_silu_kernel<scalar_t>(x, taps, b, u); });
  return u;
}

torch::Tensor gate(const torch::Tensor& y_in, const torch::Tensor& z_in) {
  TORCH_CHECK(z_in.dim() == 3 && z_in.device().is_cpu() && y_in.dim() == 3 && y_in.size(0) == z_in.size(0) &&
                  y_in.size(1) == z_in.size(1) && y_in.size(2) == 2 * z_in.size(2),
              "mixer gate: y must be (B, L, 2 inner) and z (B, L, inner) on CPU");
  TORCH_CHECK(y_in.scalar_type() == z_in.scalar_type(), "mixer gate: y and z must share a dtype");
  const auto y = y_in.contiguous();
  const auto z = channels_adjacent(z_in);
  auto gated = z.new_empty(z.sizes());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "mixer_gate", [&] { gate_kernel<scalar_t>(y, z, gated); });
  return gated;
}

}  // namespace

void register_mixer_ops(pybind11::module_& m) {
  m.def("mixer_conv_silu", &conv_silu, "both directions' causal conv + SiLU, no flip or cat (CPU, inference)");
  m.def("mixer_gate", &gate, "(y_forward + flip(y_backward)) * silu(z) (CPU, inference)");
}
