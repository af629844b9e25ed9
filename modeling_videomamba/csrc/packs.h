// Packs and the fp32 exp shared by the native CPU kernels (selective_scan_cpu.cpp, mixer_cpu.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// Packs: the float kernel works on native vectors of kWidth floats (GCC/Clang vector extensions), one
// AVX-512 register, one AVX2 register or 128 bits otherwise; a 16-lane tile row is kTile / kWidth
// packs. Written out rather than left to the auto-vectoriser, which made exp's clamps compares and
// blends. float64 uses "packs" of one double (plain lane loops, std::exp).
// max_of(lo, x) / min_of(hi, x) keep x second, so that a NaN x comes back as NaN (the instructions
// return their second operand when either is NaN); fmadd rounds once (exp's accuracy counts on it).
#if defined(__AVX512F__)
constexpr int64_t kWidth = 16;
typedef __m512 Native;
#define NATIVE_PS(op) _mm512_##op##_ps
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kWidth = 8;
typedef __m256 Native;
#define NATIVE_PS(op) _mm256_##op##_ps
#else
constexpr int64_t kWidth = 4;
#endif
typedef float VecF __attribute__((vector_size(kWidth * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kWidth * sizeof(int32_t))));
#ifdef NATIVE_PS
inline VecF max_of(VecF lo, VecF x) { return (VecF)NATIVE_PS(max)((Native)lo, (Native)x); }
inline VecF min_of(VecF hi, VecF x) { return (VecF)NATIVE_PS(min)((Native)hi, (Native)x); }
inline VecF fmadd(VecF a, VecF b, VecF c) { return (VecF)NATIVE_PS(fmadd)((Native)a, (Native)b, (Native)c); }
inline VecF splat(float x) { return (VecF)NATIVE_PS(set1)(x); }
#undef NATIVE_PS
#else  // other CPUs (SSE, NEON, ...): generic vectors, the compiler picks the instructions
inline VecF max_of(VecF lo, VecF x) { return lo > x ? lo : x; }
inline VecF min_of(VecF hi, VecF x) { return hi < x ? hi : x; }
inline VecF fmadd(VecF a, VecF b, VecF c) { return a * b + c; }
inline VecF splat(float x) { return VecF{} + x; }
#endif
inline double max_of(double lo, double x) { return lo > x ? lo : x; }
inline double fmadd(double a, double b, double c) { return a * b + c; }
inline double splat(double x) { return x; }
inline float lane(const VecF& v, int64_t i) { return v[i]; }
inline double lane(double v, int64_t) { return v; }

template <typename T> struct PackOf { using type = T; };
template <> struct PackOf<float> { using type = VecF; };
template <typename T> using Pack = typename PackOf<T>::type;
template <typename T> constexpr int64_t kLanes = sizeof(Pack<T>) / sizeof(T);  // lanes per pack

template <typename P, typename T> inline P load(const T* p) { P v; std::memcpy(&v, p, sizeof(P)); return v; }
template <typename P, typename T> inline void store(T* p, const P& v) { std::memcpy(p, &v, sizeof(P)); }

// exp for a pack of floats, branch-free: 2^k * p(r), r = x - k ln2 with a two-part ln2 (Cody-Waite)
// and p a degree-6 polynomial fitted (minimax relative error 5e-9 with these fp32 coefficients) on
// |r| <= ln2 / 2, in Horner form. k is rounded to nearest by adding 1.5 * 2^23 (+ 127, the exponent
// bias): the sum's low mantissa bits then hold k + 127, and shifted left by 23 they are 2^k's bits.
// x is clamped to [kExpLow, kExpHigh] so 2^k stays a normal float (exp(-87.3) ~ 1e-38 stands in for
// the denormal range); NaN stays NaN. Within 0.9 ulp of exp there (every 17th float checked against a
// double exp; tests/test_native_scan.py checks it through the scan). kClamp = false: no clamp, for x known inside.
constexpr float kExpLow = -87.3f, kExpHigh = 88.3f;

template <bool kClamp = true>
inline VecF exp_pack(VecF x) {
  const VecF shift = splat(12582912.0f + 127.0f);
  if (kClamp) x = min_of(splat(kExpHigh), max_of(splat(kExpLow), x));
  const VecF biased = fmadd(x, splat(1.44269504088896341f), shift);
  const VecF k = biased - shift;
  VecF r = fmadd(k, splat(-0.693359375f), x);
  r = fmadd(k, splat(2.12194440e-4f), r);
  VecF p = splat(1.388586126e-3f);
  p = fmadd(p, r, splat(8.372968994e-3f));
  p = fmadd(p, r, splat(4.166749120e-2f));
  p = fmadd(p, r, splat(1.666647643e-1f));
  p = fmadd(p, r, splat(4.999999404e-1f));
  p = fmadd(p, r, splat(1.0f));
  p = fmadd(p, r, splat(1.0f));
  VecI bits = load<VecI>(&biased);
  bits <<= 23;  // (k + 127) << 23: the bits of 2^k
  return p * load<VecF>(&bits);  // a product, not an add to the exponent bits, so NaN stays NaN
}

template <bool kClamp = true> inline double exp_pack(double x) { return std::exp(x); }

}  // namespace
