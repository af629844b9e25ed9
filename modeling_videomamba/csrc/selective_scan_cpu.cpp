// Selective scan (Mamba's S6 recurrence) for CPU: the core of modeling_videomamba/selective_scan.py's
// "native" implementation, compiled on first use by torch.utils.cpp_extension.
//
// Layout (token-major, as the mixer's projections produce it; all contiguous):
//   u, delta : (batch, L, groups, dg)      A : (groups, N, dg)      B, C : (batch, L, groups, N)
//   state    : (batch, groups, N, dg)      s_t = exp(delta_t A) * s_{t-1} + delta_t u_t B_t
//   y        : (batch, L, groups, dg)      y_t = <s_t, C_t> over N  (+ D u_t)
// Optionally fused, as they cost more than the scan's own time as separate PyTorch ops: the step-size
// bias and softplus (delta_t <- softplus(delta_t + delta_bias)) and the skip term D u_t, with D and
// delta_bias of shape (groups * dg,). The z gate is mixer_cpu.cpp's (with the conv, for inference).
//
// Work is split into tasks of (batch, group, tile of kTile channels); a task owns its channels, keeps
// their (N, kTile) state in a small buffer and walks the sequence once. Tiles are padded to kTile
// lanes with zeros (delta = u = dy = A = 0 keeps a padded lane's state and adjoint at zero), so every
// inner loop has a fixed trip count (over explicit vectors for float; see "Packs" in packs.h).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "packs.h"

namespace {

constexpr int64_t kTile = 16;

template <typename T> constexpr int64_t kPacks = kTile * sizeof(T) / sizeof(Pack<T>);  // packs per tile row

// log1p(y) for y in [0, 1] as 2 atanh(s), s = y / (2 + y) in [0, 1/3]: the odd series to s^15 is
// below float rounding there and keeps full relative accuracy for tiny y (no 1 + y cancellation).
inline VecF log1p_unit(VecF y) {
  const VecF s = y / (2.0f + y), s2 = s * s;
  VecF p = splat(1.0f / 15.0f);
  for (const float c : {1.0f / 13.0f, 1.0f / 11.0f, 1.0f / 9.0f, 1.0f / 7.0f, 1.0f / 5.0f, 1.0f / 3.0f, 1.0f})
    p = fmadd(p, s2, splat(c));
  return 2.0f * s * p;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), and its slope sigmoid(x), branch-free.
inline void softplus_pack(VecF x, VecF& value, VecF& slope) {
  const VecF e = exp_pack(min_of(x, -x));
  value = max_of(VecF{}, x) + log1p_unit(e);
  const VecF r = 1.0f / (1.0f + e);
  slope = x > 0.0f ? r : e * r;
}

inline void softplus_pack(double x, double& value, double& slope) {
  const double e = std::exp(-std::abs(x));
  value = std::max(x, 0.0) + std::log1p(e);
  slope = x > 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

// The per-channel options of a scan: D and delta_bias as kTile lanes of a task (zeros when absent).
template <typename T>
struct Options {
  const T *D, *bias;
  bool softplus;
};

// delta_t of a task's lanes: raw + bias, then softplus; slope = d delta / d raw (1 without softplus).
template <typename T>
inline void prepare_delta(T* dl, T* slope, const T* bias, bool softplus) {
  using P = Pack<T>;
  for (int64_t j = 0; j < kTile; j += kLanes<T>) {
    P x = load<P>(dl + j) + load<P>(bias + j), value = x, dvalue = P{} + T(1);
    if (softplus) softplus_pack(x, value, dvalue);
    store(dl + j, value);
    store(slope + j, dvalue);
  }
}

// One step of the recurrence for all state rows n of a tile: s_n <- exp(delta A_n) s_n + (delta u) B_n.
// The forward (kBackward false) adds <s_n, C_n> over n to acc; the backward's recomputation instead
// keeps exp(delta A_n) in decay and writes the new states one state block further (Ct and acc
// unused). At least two packs are in flight per iteration (two rows when a row is one AVX-512
// pack), each with its own accumulator: their exps are independent chains that interleave, and y's
// sum over n is not one long dependent chain. (More would only spill registers on AVX2.)
//   state, a, decay : (N, kTile)      dl, du, acc : (kTile,)      Bt, Ct : (N,)
template <typename T, bool kBackward, bool kClamp>
inline void step_rows(T* state, const T* a, const T* dl, const T* du, const T* Bt, const T* Ct, int64_t N,
                      T* acc, T* decay) {
  using P = Pack<T>;
  constexpr int64_t J = kPacks<T>, W = kLanes<T>, R = J >= 2 ? 1 : 2;  // R rows per iteration
  P d[J], v[J], sum[R][J];
  for (int64_t j = 0; j < J; ++j) {
    d[j] = load<P>(dl + j * W);
    v[j] = load<P>(du + j * W);
    for (int64_t q = 0; q < R; ++q) sum[q][j] = q == 0 && !kBackward ? load<P>(acc + j * W) : P{};
  }
  // Rows n .. n + rows - 1 (rows <= R), row n + q into sum[q]. The loops unroll fully, so that the
  // accumulators stay in registers.
  auto rows_from = [&](int64_t n, int64_t rows) {
#pragma GCC unroll 2
    for (int64_t q = 0; q < R; ++q) {
      if (q >= rows) break;
      const P b = splat(Bt[n + q]);
#pragma GCC unroll 4
      for (int64_t j = 0; j < J; ++j) {
        const int64_t at = (n + q) * kTile + j * W;
        const P e = exp_pack<kClamp>(d[j] * load<P>(a + at));
        const P s = fmadd(e, load<P>(state + at), v[j] * b);
        if (kBackward) {
          store(decay + at, e);
          store(state + N * kTile + at, s);
        } else {
          store(state + at, s);
          sum[q][j] = fmadd(s, splat(Ct[n + q]), sum[q][j]);
        }
      }
    }
  };
  int64_t n = 0;
  for (; n + R <= N; n += R) rows_from(n, R);
  if (n < N) rows_from(n, N - n);
  for (int64_t j = 0; j < J && !kBackward; ++j) store(acc + j * W, R == 1 ? sum[0][j] : sum[0][j] + sum[R - 1][j]);
}

// step_rows with exp's clamp left out when no delta A of this step can leave exp's range:
// |delta| <= max |delta| of the row and |A| <= a_bound = max |A| of the tile. (A NaN or infinite
// bound fails the test and keeps the clamp; a NaN delta propagates either way.)
template <typename T, bool kBackward>
inline void advance(T* state, const T* a, T a_bound, const T* dl, const T* du, const T* Bt, const T* Ct, int64_t N,
                    T* acc, T* decay) {
  using P = Pack<T>;
  P bound = P{};
  for (int64_t j = 0; j < kTile; j += kLanes<T>) {
    const P x = load<P>(dl + j);
    bound = max_of(bound, max_of(x, -x));  // |x| (a NaN lane may drop out: exp keeps NaN either way)
  }
  T d_bound = T(0);
  for (int64_t i = 0; i < kLanes<T>; ++i) d_bound = std::max(d_bound, lane(bound, i));
  if (d_bound * a_bound <= T(-kExpLow)) return step_rows<T, kBackward, false>(state, a, dl, du, Bt, Ct, N, acc, decay);
  step_rows<T, kBackward, true>(state, a, dl, du, Bt, Ct, N, acc, decay);
}

// The largest |x| of `count` values (NaN when one is NaN, so that callers keep their clamps).
template <typename T> inline T max_abs(const T* x, int64_t count) {
  T bound = T(0);
  for (int64_t i = 0; i < count; ++i) bound = std::isnan(x[i]) || bound < std::abs(x[i]) ? std::abs(x[i]) : bound;
  return bound;
}

struct Shape {
  int64_t batch, length, groups, dg, state, tiles;
  int64_t dim() const { return groups * dg; }
  int64_t tasks() const { return batch * groups * tiles; }
};

Shape shape_of(const torch::Tensor& u, const torch::Tensor& A) {
  Shape s{u.size(0), u.size(1), u.size(2), u.size(3), A.size(1), 0};
  s.tiles = (s.dg + kTile - 1) / kTile;
  return s;
}

// One task's coordinates: batch b, group g, channels [c0, c0 + width) of the group.
struct Task {
  int64_t b, g, c0, width;
  Task(const Shape& s, int64_t index) {
    const int64_t tile = index % s.tiles;
    g = (index / s.tiles) % s.groups;
    b = index / (s.tiles * s.groups);
    c0 = tile * kTile;
    width = std::min(kTile, s.dg - c0);
  }
};

// Copy `width` values from src into a kTile lane array, zero-padding the rest. (Full tiles, the
// common case, are one fixed-size copy: the per-lane loop costs as much as a state row per token.)
template <typename T> inline void load_lanes(T* dst, const T* src, int64_t width) {
  if (width == kTile) return (void)std::memcpy(dst, src, kTile * sizeof(T));
  for (int64_t c = 0; c < kTile; ++c) dst[c] = c < width ? src[c] : T(0);
}

// The first `width` lanes of a kTile lane array into dst.
template <typename T> inline void store_lanes(T* dst, const T* src, int64_t width) {
  std::memcpy(dst, src, (width == kTile ? kTile : width) * sizeof(T));
}

template <typename T>
void check_inputs(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                  const torch::Tensor& B, const torch::Tensor& C) {
  for (const auto* t : {&u, &delta, &A, &B, &C}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == u.scalar_type(),
                "selective_scan_cpu expects contiguous CPU tensors of one dtype");
  }
  TORCH_CHECK(u.dim() == 4 && delta.sizes() == u.sizes() && A.dim() == 3 && B.dim() == 4 &&
                  B.sizes() == C.sizes() && A.size(0) == u.size(2) && A.size(2) == u.size(3) &&
                  B.size(0) == u.size(0) && B.size(1) == u.size(1) && B.size(2) == u.size(2) &&
                  B.size(3) == A.size(1),
              "selective_scan_cpu: inconsistent shapes u ", u.sizes(), ", A ", A.sizes(), ", B ", B.sizes());
}

// The forward recurrence. Writes y and the last state; with `checkpoints` defined also the state
// entering every block of `block` tokens (what the backward recomputes a block from).
template <typename T>
void forward_kernel(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                    const torch::Tensor& B, const torch::Tensor& C, const Options<T>& options, torch::Tensor& y,
                    torch::Tensor& last, torch::Tensor* checkpoints, int64_t block) {
  const Shape s = shape_of(u, A);
  const T *pu = u.data_ptr<T>(), *pd = delta.data_ptr<T>(), *pA = A.data_ptr<T>();
  const T *pB = B.data_ptr<T>(), *pC = C.data_ptr<T>();
  T *py = y.data_ptr<T>(), *plast = last.data_ptr<T>();
  T* pck = checkpoints ? checkpoints->data_ptr<T>() : nullptr;
  const int64_t N = s.state, dim = s.dim();

  at::parallel_for(0, s.tasks(), 1, [&](int64_t first, int64_t end) {
    std::vector<T> state(N * kTile), a(N * kTile);
    for (int64_t index = first; index < end; ++index) {
      const Task task(s, index);
      T D[kTile], bias[kTile];
      load_lanes(D, options.D + task.g * s.dg + task.c0, task.width);
      load_lanes(bias, options.bias + task.g * s.dg + task.c0, task.width);
      std::fill(state.begin(), state.end(), T(0));
      for (int64_t n = 0; n < N; ++n) load_lanes(&a[n * kTile], pA + (task.g * N + n) * s.dg + task.c0, task.width);
      const T a_bound = max_abs(a.data(), N * kTile);
      for (int64_t t = 0; t < s.length; ++t) {
        if (pck && t % block == 0) {
          T* out = pck + (((t / block) * s.batch + task.b) * s.groups + task.g) * N * s.dg + task.c0;
          for (int64_t n = 0; n < N; ++n) store_lanes(out + n * s.dg, &state[n * kTile], task.width);
        }
        const int64_t row = (task.b * s.length + t) * dim + task.g * s.dg + task.c0;
        const T* Bt = pB + ((task.b * s.length + t) * s.groups + task.g) * N;
        const T* Ct = pC + ((task.b * s.length + t) * s.groups + task.g) * N;
        T dl[kTile], slope[kTile], uu[kTile], du[kTile], acc[kTile];
        load_lanes(dl, pd + row, task.width);
        load_lanes(uu, pu + row, task.width);
        prepare_delta(dl, slope, bias, options.softplus);
        for (int64_t c = 0; c < kTile; ++c) {
          du[c] = dl[c] * uu[c];
          acc[c] = D[c] * uu[c];
        }
        advance<T, false>(state.data(), a.data(), a_bound, dl, du, Bt, Ct, N, acc, nullptr);
        store_lanes(py + row, acc, task.width);
      }
      T* out = plast + (task.b * s.groups + task.g) * N * s.dg + task.c0;
      for (int64_t n = 0; n < N; ++n) store_lanes(out + n * s.dg, &state[n * kTile], task.width);
    }
  });
}

// The reverse-time adjoint. Per block (backwards) the block's states and decays are recomputed from
// its checkpoint, then lambda_t = C_t dy_t + exp(delta_{t+1} A) lambda_{t+1} runs backwards and
// gives every gradient. B/C are shared by a group's channels, so their gradients are partial sums:
// each task adds into one slice of grad_B_part/grad_C_part (slices, batch, L, groups, N), summed by
// the caller. A slice is written by one thread only: one slice per thread when there are at most as
// many threads as tiles (so the buffers do not grow with the width), else one per tile; `nested`
// (called inside another parallel region, where parallel_for runs inline) means a single slice.
// grad_A is likewise partial per batch element.
template <typename T>
void backward_kernel(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                     const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& checkpoints,
                     const Options<T>& options, const torch::Tensor& grad_y, const torch::Tensor& grad_last,
                     int64_t block,
                     torch::Tensor& grad_u, torch::Tensor& grad_delta, torch::Tensor& grad_A_part,
                     torch::Tensor& grad_B_part, torch::Tensor& grad_C_part, bool slot_per_thread,
                     bool nested) {
  const Shape s = shape_of(u, A);
  const T *pu = u.data_ptr<T>(), *pd = delta.data_ptr<T>(), *pA = A.data_ptr<T>();
  const T *pB = B.data_ptr<T>(), *pC = C.data_ptr<T>(), *pck = checkpoints.data_ptr<T>();
  const T *pgy = grad_y.data_ptr<T>(), *pgl = grad_last.data_ptr<T>();
  T *pgu = grad_u.data_ptr<T>(), *pgd = grad_delta.data_ptr<T>(), *pgA = grad_A_part.data_ptr<T>();
  T *pgB = grad_B_part.data_ptr<T>(), *pgC = grad_C_part.data_ptr<T>();
  const int64_t N = s.state, dim = s.dim(), blocks = (s.length + block - 1) / block;
  const int64_t bc_size = s.batch * s.length * s.groups * N;  // one slice of partial grad_B / grad_C

  at::parallel_for(0, s.tasks(), 1, [&](int64_t first, int64_t end) {
    // states[i] = s_{start + i - 1} (states[0] enters the block), decays[i] = exp(delta_{start+i} A).
    std::vector<T> states((block + 1) * N * kTile), decays(block * N * kTile);
    std::vector<T> a(N * kTile), lam(N * kTile), gA(N * kTile);
    for (int64_t index = first; index < end; ++index) {
      const Task task(s, index);
      const int64_t slot = nested ? 0 : slot_per_thread ? at::get_thread_num() : task.c0 / kTile;
      T* gB_slice = pgB + slot * bc_size;
      T* gC_slice = pgC + slot * bc_size;
      T D[kTile], bias[kTile];
      load_lanes(D, options.D + task.g * s.dg + task.c0, task.width);
      load_lanes(bias, options.bias + task.g * s.dg + task.c0, task.width);
      for (int64_t n = 0; n < N; ++n) {
        load_lanes(&a[n * kTile], pA + (task.g * N + n) * s.dg + task.c0, task.width);
        load_lanes(&lam[n * kTile], pgl + ((task.b * s.groups + task.g) * N + n) * s.dg + task.c0, task.width);
      }
      const T a_bound = max_abs(a.data(), N * kTile);
      std::fill(gA.begin(), gA.end(), T(0));
      for (int64_t blk = blocks - 1; blk >= 0; --blk) {
        const int64_t start = blk * block, size = std::min(block, s.length - start);
        const T* ck = pck + ((blk * s.batch + task.b) * s.groups + task.g) * N * s.dg + task.c0;
        for (int64_t n = 0; n < N; ++n) load_lanes(&states[n * kTile], ck + n * s.dg, task.width);
        for (int64_t i = 0; i < size; ++i) {
          const int64_t t = start + i, row = (task.b * s.length + t) * dim + task.g * s.dg + task.c0;
          const T* Bt = pB + ((task.b * s.length + t) * s.groups + task.g) * N;
          T dl[kTile], slope[kTile], du[kTile];
          load_lanes(dl, pd + row, task.width);
          load_lanes(du, pu + row, task.width);
          prepare_delta(dl, slope, bias, options.softplus);
          for (int64_t c = 0; c < kTile; ++c) du[c] *= dl[c];
          advance<T, true>(&states[i * N * kTile], a.data(), a_bound, dl, du, Bt, nullptr, N, nullptr,
                             &decays[i * N * kTile]);
        }
        for (int64_t i = size - 1; i >= 0; --i) {
          const int64_t t = start + i, row = (task.b * s.length + t) * dim + task.g * s.dg + task.c0;
          const int64_t bc_row = ((task.b * s.length + t) * s.groups + task.g) * N;
          T dl[kTile], slope[kTile], uu[kTile], du[kTile], dy[kTile], gd[kTile], lamB[kTile];
          load_lanes(dl, pd + row, task.width);
          load_lanes(uu, pu + row, task.width);
          load_lanes(dy, pgy + row, task.width);
          prepare_delta(dl, slope, bias, options.softplus);
          for (int64_t c = 0; c < kTile; ++c) {
            du[c] = dl[c] * uu[c];
            gd[c] = T(0);
            lamB[c] = T(0);
          }
          for (int64_t n = 0; n < N; ++n) {
            T* ln = &lam[n * kTile];
            T* gAn = &gA[n * kTile];
            const T* prev = &states[(i * N + n) * kTile];
            const T* cur = &states[((i + 1) * N + n) * kTile];
            const T* e = &decays[(i * N + n) * kTile];
            const T* an = &a[n * kTile];
            const T b = pB[bc_row + n], cc = pC[bc_row + n];
            T gB = T(0), gC = T(0);
            for (int64_t c = 0; c < kTile; ++c) {
              ln[c] += cc * dy[c];
              gC += cur[c] * dy[c];
              const T w = ln[c] * e[c] * prev[c];  // dL/d(delta_t A)
              gd[c] += w * an[c];
              gAn[c] += w * dl[c];
              lamB[c] += ln[c] * b;
              gB += ln[c] * du[c];
              ln[c] *= e[c];  // the carry into step t - 1
            }
            gB_slice[bc_row + n] += gB;
            gC_slice[bc_row + n] += gC;
          }
          for (int64_t c = 0; c < task.width; ++c) {
            // grad_delta is with respect to the raw delta (before bias and softplus).
            pgu[row + c] = lamB[c] * dl[c] + D[c] * dy[c];
            pgd[row + c] = (gd[c] + lamB[c] * uu[c]) * slope[c];
          }
        }
      }
      T* out = pgA + ((task.b * s.groups + task.g) * N) * s.dg + task.c0;
      for (int64_t n = 0; n < N; ++n) store_lanes(out + n * s.dg, &gA[n * kTile], task.width);
    }
  });
}

// Returns (y, last_state, checkpoints); checkpoints is empty unless save_checkpoints.
// D / delta_bias: (groups * dg,) tensors of u's dtype, or empty ones for "none" (zeros are used).
template <typename T>
Options<T> make_options(const torch::Tensor& u, const torch::Tensor& D, const torch::Tensor& delta_bias, bool softplus,
                        torch::Tensor& zeros) {
  const int64_t dim = u.size(2) * u.size(3);
  zeros = u.new_zeros({dim});
  for (const auto* t : {&D, &delta_bias}) {
    TORCH_CHECK(t->numel() == 0 || (t->numel() == dim && t->is_contiguous() && t->scalar_type() == u.scalar_type()),
                "selective_scan_cpu: D and delta_bias must be empty or contiguous (", dim, ",) of u's dtype");
  }
  return {(D.numel() ? D : zeros).data_ptr<T>(), (delta_bias.numel() ? delta_bias : zeros).data_ptr<T>(), softplus};
}

std::vector<torch::Tensor> scan_forward(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                        const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                                        const torch::Tensor& delta_bias, bool softplus, bool save_checkpoints,
                                        int64_t block) {
  TORCH_CHECK(block >= 1, "selective_scan_cpu: block must be >= 1");
  auto y = torch::empty_like(u);
  auto last = u.new_empty({u.size(0), u.size(2), A.size(1), u.size(3)});
  auto checkpoints = save_checkpoints
                         ? u.new_empty({(u.size(1) + block - 1) / block, u.size(0), u.size(2), A.size(1), u.size(3)})
                         : u.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    check_inputs<scalar_t>(u, delta, A, B, C);
    torch::Tensor zeros;
    const auto options = make_options<scalar_t>(u, D, delta_bias, softplus, zeros);
    forward_kernel<scalar_t>(u, delta, A, B, C, options, y, last, save_checkpoints ? &checkpoints : nullptr, block);
  });
  return {y, last, checkpoints};
}

// Returns (grad_u, grad_delta, grad_A, grad_B, grad_C) in the forward's layout; grad_delta is with
// respect to the raw delta. grad_D and grad_delta_bias are sums over (batch, L) the caller forms.
std::vector<torch::Tensor> scan_backward(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                         const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                                         const torch::Tensor& delta_bias, bool softplus,
                                         const torch::Tensor& checkpoints, const torch::Tensor& grad_y,
                                         const torch::Tensor& grad_last, int64_t block) {
  const Shape s = shape_of(u, A);
  TORCH_CHECK(checkpoints.dim() == 5 && checkpoints.size(0) == (s.length + block - 1) / block,
              "selective_scan_cpu: checkpoints do not match the block size");
  TORCH_CHECK(grad_y.sizes() == u.sizes() && grad_y.is_contiguous() && grad_last.is_contiguous() &&
                  grad_last.sizes() == torch::IntArrayRef({s.batch, s.groups, s.state, s.dg}),
              "selective_scan_cpu: gradient shapes do not match");
  auto grad_u = torch::empty_like(u), grad_delta = torch::empty_like(delta);
  auto grad_A_part = u.new_empty({s.batch, s.groups, s.state, s.dg});
  const bool nested = at::in_parallel_region();
  const int64_t threads = nested ? 1 : at::get_num_threads();
  const bool slot_per_thread = threads <= s.tiles;
  const int64_t slices = slot_per_thread ? threads : s.tiles;
  auto grad_B_part = u.new_zeros({slices, s.batch, s.length, s.groups, s.state});
  auto grad_C_part = u.new_zeros({slices, s.batch, s.length, s.groups, s.state});
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
    check_inputs<scalar_t>(u, delta, A, B, C);
    torch::Tensor zeros;
    const auto options = make_options<scalar_t>(u, D, delta_bias, softplus, zeros);
    backward_kernel<scalar_t>(u, delta, A, B, C, checkpoints, options, grad_y, grad_last, block, grad_u, grad_delta,
                              grad_A_part, grad_B_part, grad_C_part, slot_per_thread,
                              nested);
  });
  return {grad_u, grad_delta, grad_A_part.sum(0), grad_B_part.sum(0), grad_C_part.sum(0)};
}

}  // namespace

void register_mixer_ops(pybind11::module_& m);  // mixer_cpu.cpp: the mixer's fused conv and gate

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &scan_forward, "selective scan forward (CPU)");
  m.def("backward", &scan_backward, "selective scan backward (CPU)");
  register_mixer_ops(m);
}
