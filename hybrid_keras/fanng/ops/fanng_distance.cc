// Distance and validation kernels with run-time CPU dispatch.
//
// The library is compiled without -march flags so it loads on any x86-64 (and builds on
// other architectures). The AVX2+FMA versions carry a target attribute and are chosen
// once, at load time, when the CPU reports AVX2 and FMA; the portable versions keep eight
// independent partial sums, which the compiler turns into SSE code at -O3 (a single
// running sum would be a serial chain it is not allowed to reorder without -ffast-math).
//
// Both orders of the arguments give bit-identical results (the difference is negated
// exactly, products commute, and the summation order is fixed), which the build relies on:
// d(a, b) computed while visiting a equals d(b, a) computed while visiting b.

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fanng_core.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HK_FANNG_X86 1
#endif

namespace hybrid_keras {
namespace fanng {
namespace {

float L2Portable(const float* a, const float* b, int64_t dim) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const float diff = a[i + j] - b[i + j];
      acc[j] += diff * diff;
    }
  }
  float tail = 0.f;
  for (; i < dim; ++i) {
    const float diff = a[i] - b[i];
    tail += diff * diff;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

float NegDotPortable(const float* a, const float* b, int64_t dim) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float tail = 0.f;
  for (; i < dim; ++i) tail += a[i] * b[i];
  return -(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail);
}

bool AllFinitePortable(const float* values, int64_t count) {
  // x * 0 is 0 for finite x and NaN for NaN or +-inf; NaN survives any sum, so the
  // partial sums are NaN exactly when some value is not finite. Eight lanes vectorise.
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += values[i + j] * 0.f;
  }
  float tail = 0.f;
  for (; i < count; ++i) tail += values[i] * 0.f;
  for (int j = 0; j < 8; ++j) tail += acc[j];
  return tail == 0.f;
}

bool IdsInRangePortable(const int32_t* ids, int64_t count, int32_t limit) {
  // Branch-free min/max so the loop vectorises; one comparison at the end.
  int32_t lo = 0, hi = 0;
  for (int64_t i = 0; i < count; ++i) {
    lo = ids[i] < lo ? ids[i] : lo;
    hi = ids[i] > hi ? ids[i] : hi;
  }
  return lo >= -1 && hi < limit;
}

#ifdef HK_FANNG_X86

__attribute__((target("avx2"))) bool IdsInRangeAvx2(const int32_t* ids, int64_t count, int32_t limit) {
  __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ids + i));
    lo = _mm256_min_epi32(lo, v);
    hi = _mm256_max_epi32(hi, v);
  }
  alignas(32) int32_t lo_lanes[8], hi_lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lo_lanes), lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(hi_lanes), hi);
  for (int j = 0; j < 8; ++j) {
    if (lo_lanes[j] < -1 || hi_lanes[j] >= limit) return false;
  }
  return IdsInRangePortable(ids + i, count - i, limit);
}

__attribute__((target("avx2,fma"))) inline float HorizontalSum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Four accumulators: enough independent FMA chains to cover the FMA latency on current
// cores for the common 64..512-dimensional embeddings.
__attribute__((target("avx2,fma"))) float L2Avx2(const float* a, const float* b, int64_t dim) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= dim; i += 32) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
    const __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
    const __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
    acc0 = _mm256_fmadd_ps(d0, d0, acc0);
    acc1 = _mm256_fmadd_ps(d1, d1, acc1);
    acc2 = _mm256_fmadd_ps(d2, d2, acc2);
    acc3 = _mm256_fmadd_ps(d3, d3, acc3);
  }
  for (; i + 8 <= dim; i += 8) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    acc0 = _mm256_fmadd_ps(d0, d0, acc0);
  }
  float sum = HorizontalSum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; i < dim; ++i) {
    const float diff = a[i] - b[i];
    sum += diff * diff;
  }
  return sum;
}

__attribute__((target("avx2,fma"))) float NegDotAvx2(const float* a, const float* b, int64_t dim) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= dim; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
  }
  for (; i + 8 <= dim; i += 8) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  }
  float sum = HorizontalSum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; i < dim; ++i) sum += a[i] * b[i];
  return -sum;
}

__attribute__((target("avx2"))) bool AllFiniteAvx2(const float* values, int64_t count) {
  // Exponent bits all ones <=> NaN or inf. Compare the masked exponent lane-wise.
  const __m256i exponent = _mm256_set1_epi32(0x7f800000);
  __m256i bad = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + i));
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(bits, exponent), exponent));
  }
  if (!_mm256_testz_si256(bad, bad)) return false;
  for (; i < count; ++i) {
    if (!std::isfinite(values[i])) return false;
  }
  return true;
}

bool CpuHasAvx2Fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#else

bool CpuHasAvx2Fma() { return false; }

#endif  // HK_FANNG_X86

struct Kernels {
  DistanceFn l2;
  DistanceFn neg_dot;
  bool (*all_finite)(const float*, int64_t);
  bool (*ids_in_range)(const int32_t*, int64_t, int32_t);
};

Kernels PickKernels() {
#ifdef HK_FANNG_X86
  if (CpuHasAvx2Fma()) return {&L2Avx2, &NegDotAvx2, &AllFiniteAvx2, &IdsInRangeAvx2};
#endif
  return {&L2Portable, &NegDotPortable, &AllFinitePortable, &IdsInRangePortable};
}

const Kernels& GetKernels() {
  static const Kernels kernels = PickKernels();
  return kernels;
}

}  // namespace

DistanceFn GetDistanceFn(Metric metric) {
  return metric == Metric::kL2 ? GetKernels().l2 : GetKernels().neg_dot;
}

bool AllFinite(const float* values, int64_t count) { return GetKernels().all_finite(values, count); }

bool IdsInRange(const int32_t* ids, int64_t count, int32_t limit) {
  return GetKernels().ids_in_range(ids, count, limit);
}

}  // namespace fanng
}  // namespace hybrid_keras
