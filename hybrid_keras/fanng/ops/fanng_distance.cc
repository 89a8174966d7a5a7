// Distance and validation kernels with run-time CPU dispatch.
//
// The library is compiled without -march flags so it loads on any x86-64 (and builds on
// other architectures). The AVX2 versions carry a target attribute and are chosen once,
// at load time, when the CPU reports AVX2, FMA and F16C; the portable versions keep eight
// independent partial sums, which the compiler turns into SSE code at -O3 (a single
// running sum would be a serial chain it is not allowed to reorder without -ffast-math).
//
// Storage types: float32; float16 (converted to float32 lane by lane, F16C); uint8 codes
// with value = offset + scale * code. For uint8 under L2 the kernels work in code units
// (the query is mapped to (q - offset) / scale once, and the distance is scale^2 times
// the code-unit distance); two stored rows are compared in exact integer arithmetic.
//
// Both orders of the arguments give bit-identical results (the difference is negated
// exactly, products commute, and the summation order is fixed), which the build relies on:
// d(a, b) computed while visiting a equals d(b, a) computed while visiting b.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "fanng_core.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HK_FANNG_X86 1
#endif

namespace hybrid_keras {
namespace fanng {
namespace {

// IEEE binary16 to binary32, exact (every half is a float).
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: mantissa * 2^-24
      const float value = std::ldexp(static_cast<float>(mantissa), -24);
      std::memcpy(&bits, &value, sizeof bits);
      bits |= sign;
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

inline float ToFloat(float x) { return x; }
inline float ToFloat(uint16_t x) { return HalfToFloat(x); }
inline float ToFloat(uint8_t x) { return static_cast<float>(x); }

template <typename A, typename B>
float L2Portable(const A* a, const B* b, int64_t dim) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const float diff = ToFloat(a[i + j]) - ToFloat(b[i + j]);
      acc[j] += diff * diff;
    }
  }
  float tail = 0.f;
  for (; i < dim; ++i) {
    const float diff = ToFloat(a[i]) - ToFloat(b[i]);
    tail += diff * diff;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

template <typename A, typename B>
float NegDotPortable(const A* a, const B* b, int64_t dim) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += ToFloat(a[i + j]) * ToFloat(b[i + j]);
  }
  float tail = 0.f;
  for (; i < dim; ++i) tail += ToFloat(a[i]) * ToFloat(b[i]);
  return -(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail);
}

// Squared distance between two code rows, exact in integers (the op bounds dim so that
// the sum fits comfortably), returned as float.
float CodeL2Portable(const void* a, const void* b, int64_t dim) {
  const uint8_t* x = static_cast<const uint8_t*>(a);
  const uint8_t* y = static_cast<const uint8_t*>(b);
  int64_t sum = 0;
  for (int64_t i = 0; i < dim; ++i) {
    const int32_t diff = static_cast<int32_t>(x[i]) - static_cast<int32_t>(y[i]);
    sum += diff * diff;
  }
  return static_cast<float>(sum);
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

#define HK_FANNG_AVX2 __attribute__((target("avx2,fma,f16c")))

HK_FANNG_AVX2 bool IdsInRangeAvx2(const int32_t* ids, int64_t count, int32_t limit) {
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

HK_FANNG_AVX2 inline float HorizontalSum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight lanes of any storage type as float32.
HK_FANNG_AVX2 inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
HK_FANNG_AVX2 inline __m256 Load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
HK_FANNG_AVX2 inline __m256 Load8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Four accumulators: enough independent FMA chains to cover the FMA latency on current
// cores for the common 64..512-dimensional vectors.
template <typename A, typename B>
HK_FANNG_AVX2 float L2Avx2(const A* a, const B* b, int64_t dim) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= dim; i += 32) {
    const __m256 d0 = _mm256_sub_ps(Load8(a + i), Load8(b + i));
    const __m256 d1 = _mm256_sub_ps(Load8(a + i + 8), Load8(b + i + 8));
    const __m256 d2 = _mm256_sub_ps(Load8(a + i + 16), Load8(b + i + 16));
    const __m256 d3 = _mm256_sub_ps(Load8(a + i + 24), Load8(b + i + 24));
    acc0 = _mm256_fmadd_ps(d0, d0, acc0);
    acc1 = _mm256_fmadd_ps(d1, d1, acc1);
    acc2 = _mm256_fmadd_ps(d2, d2, acc2);
    acc3 = _mm256_fmadd_ps(d3, d3, acc3);
  }
  for (; i + 8 <= dim; i += 8) {
    const __m256 d0 = _mm256_sub_ps(Load8(a + i), Load8(b + i));
    acc0 = _mm256_fmadd_ps(d0, d0, acc0);
  }
  float sum = HorizontalSum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; i < dim; ++i) {
    const float diff = ToFloat(a[i]) - ToFloat(b[i]);
    sum += diff * diff;
  }
  return sum;
}

template <typename A, typename B>
HK_FANNG_AVX2 float NegDotAvx2(const A* a, const B* b, int64_t dim) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= dim; i += 32) {
    acc0 = _mm256_fmadd_ps(Load8(a + i), Load8(b + i), acc0);
    acc1 = _mm256_fmadd_ps(Load8(a + i + 8), Load8(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(Load8(a + i + 16), Load8(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(Load8(a + i + 24), Load8(b + i + 24), acc3);
  }
  for (; i + 8 <= dim; i += 8) acc0 = _mm256_fmadd_ps(Load8(a + i), Load8(b + i), acc0);
  float sum = HorizontalSum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; i < dim; ++i) sum += ToFloat(a[i]) * ToFloat(b[i]);
  return -sum;
}

// Code rows: widen 16 bytes to 16-bit lanes, subtract, and let madd square and add pairs
// into 32-bit lanes (each lane stays below 2^31 for dim <= 65536, which the op enforces).
HK_FANNG_AVX2 float CodeL2Avx2(const void* a, const void* b, int64_t dim) {
  const uint8_t* x = static_cast<const uint8_t*>(a);
  const uint8_t* y = static_cast<const uint8_t*>(b);
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= dim; i += 32) {
    const __m256i d0 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))),
                                        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + i))));
    const __m256i d1 =
        _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i + 16))),
                         _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + i + 16))));
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(d0, d0));
    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(d1, d1));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi32(acc0, acc1));
  int64_t sum = 0;
  for (int j = 0; j < 8; ++j) sum += lanes[j];
  for (; i < dim; ++i) {
    const int32_t diff = static_cast<int32_t>(x[i]) - static_cast<int32_t>(y[i]);
    sum += diff * diff;
  }
  return static_cast<float>(sum);
}

// The same with AVX-512BW (64 codes per step), where the CPU has it: SIFT rows are 128
// bytes, two steps, and the horizontal sum is one reduction instead of a store and eight
// scalar adds.
__attribute__((target("avx512f,avx512bw"))) float CodeL2Avx512(const void* a, const void* b, int64_t dim) {
  const uint8_t* x = static_cast<const uint8_t*>(a);
  const uint8_t* y = static_cast<const uint8_t*>(b);
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 64 <= dim; i += 64) {
    const __m512i d0 =
        _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))),
                         _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + i))));
    const __m512i d1 =
        _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 32))),
                         _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + i + 32))));
    acc0 = _mm512_add_epi32(acc0, _mm512_madd_epi16(d0, d0));
    acc1 = _mm512_add_epi32(acc1, _mm512_madd_epi16(d1, d1));
  }
  for (; i + 32 <= dim; i += 32) {
    const __m512i d0 =
        _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))),
                         _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + i))));
    acc0 = _mm512_add_epi32(acc0, _mm512_madd_epi16(d0, d0));
  }
  int64_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1));
  for (; i < dim; ++i) {
    const int32_t diff = static_cast<int32_t>(x[i]) - static_cast<int32_t>(y[i]);
    sum += diff * diff;
  }
  return static_cast<float>(sum);
}

bool CpuHasAvx512Bw() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

HK_FANNG_AVX2 bool AllFiniteAvx2(const float* values, int64_t count) {
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

bool CpuHasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

#else

bool CpuHasAvx2() { return false; }
bool CpuHasAvx512Bw() { return false; }

#endif  // HK_FANNG_X86

// Type-erased entry points for the Dataset's function pointers. The AVX2 ones carry the
// target attribute themselves so the typed kernel inlines into them: one indirect call
// per distance, as before storage types existed.
template <typename A, typename B>
float PairL2Portable(const void* a, const void* b, int64_t dim) {
  return L2Portable(static_cast<const A*>(a), static_cast<const B*>(b), dim);
}
template <typename A, typename B>
float PairNegDotPortable(const void* a, const void* b, int64_t dim) {
  return NegDotPortable(static_cast<const A*>(a), static_cast<const B*>(b), dim);
}
template <typename B>
float QueryL2Portable(const float* query, const void* row, int64_t dim) {
  return L2Portable(query, static_cast<const B*>(row), dim);
}
template <typename B>
float QueryNegDotPortable(const float* query, const void* row, int64_t dim) {
  return NegDotPortable(query, static_cast<const B*>(row), dim);
}
float FloatL2Portable(const float* a, const float* b, int64_t dim) { return L2Portable(a, b, dim); }
float FloatNegDotPortable(const float* a, const float* b, int64_t dim) { return NegDotPortable(a, b, dim); }

struct Kernels {
  DistanceFn l2;
  DistanceFn neg_dot;
  PairFn pair[3][2];  // [storage][metric]; uint8 has no inner product (null: fails loudly)
  QueryFn query[3][2];
  bool (*all_finite)(const float*, int64_t);
  bool (*ids_in_range)(const int32_t*, int64_t, int32_t);
};

Kernels PortableKernels() {
  return {&FloatL2Portable,
          &FloatNegDotPortable,
          {{&PairL2Portable<float, float>, &PairNegDotPortable<float, float>},
           {&PairL2Portable<uint16_t, uint16_t>, &PairNegDotPortable<uint16_t, uint16_t>},
           {&CodeL2Portable, nullptr}},
          {{&QueryL2Portable<float>, &QueryNegDotPortable<float>},
           {&QueryL2Portable<uint16_t>, &QueryNegDotPortable<uint16_t>},
           {&QueryL2Portable<uint8_t>, nullptr}},
          &AllFinitePortable,
          &IdsInRangePortable};
}

#ifdef HK_FANNG_X86
template <typename A, typename B>
HK_FANNG_AVX2 float PairL2Avx2(const void* a, const void* b, int64_t dim) {
  return L2Avx2(static_cast<const A*>(a), static_cast<const B*>(b), dim);
}
template <typename A, typename B>
HK_FANNG_AVX2 float PairNegDotAvx2(const void* a, const void* b, int64_t dim) {
  return NegDotAvx2(static_cast<const A*>(a), static_cast<const B*>(b), dim);
}
template <typename B>
HK_FANNG_AVX2 float QueryL2Avx2(const float* query, const void* row, int64_t dim) {
  return L2Avx2(query, static_cast<const B*>(row), dim);
}
template <typename B>
HK_FANNG_AVX2 float QueryNegDotAvx2(const float* query, const void* row, int64_t dim) {
  return NegDotAvx2(query, static_cast<const B*>(row), dim);
}
HK_FANNG_AVX2 float FloatL2Avx2(const float* a, const float* b, int64_t dim) { return L2Avx2(a, b, dim); }
HK_FANNG_AVX2 float FloatNegDotAvx2(const float* a, const float* b, int64_t dim) { return NegDotAvx2(a, b, dim); }

Kernels Avx2Kernels() {
  return {&FloatL2Avx2,
          &FloatNegDotAvx2,
          {{&PairL2Avx2<float, float>, &PairNegDotAvx2<float, float>},
           {&PairL2Avx2<uint16_t, uint16_t>, &PairNegDotAvx2<uint16_t, uint16_t>},
           {&CodeL2Avx2, nullptr}},
          {{&QueryL2Avx2<float>, &QueryNegDotAvx2<float>},
           {&QueryL2Avx2<uint16_t>, &QueryNegDotAvx2<uint16_t>},
           {&QueryL2Avx2<uint8_t>, nullptr}},
          &AllFiniteAvx2,
          &IdsInRangeAvx2};
}
#endif

// HYBRID_KERAS_FANNG_PORTABLE=1 in the environment forces the portable kernels, so the
// fallback can be tested (and compared) on machines that have AVX2.
Kernels PickKernels() {
#ifdef HK_FANNG_X86
  if (std::getenv("HYBRID_KERAS_FANNG_PORTABLE") == nullptr && CpuHasAvx2()) {
    Kernels kernels = Avx2Kernels();
    if (CpuHasAvx512Bw()) kernels.pair[2][0] = &CodeL2Avx512;  // uint8 code rows (exact integers either way)
    return kernels;
  }
#endif
  return PortableKernels();
}

const Kernels& GetKernels() {
  static const Kernels kernels = PickKernels();
  return kernels;
}

int StorageIndex(Storage storage) {
  return storage == Storage::kFloat32 ? 0 : storage == Storage::kFloat16 ? 1 : 2;
}

}  // namespace

DistanceFn GetDistanceFn(Metric metric) {
  return metric == Metric::kL2 ? GetKernels().l2 : GetKernels().neg_dot;
}

bool AllFinite(const float* values, int64_t count) { return GetKernels().all_finite(values, count); }

bool AllFiniteHalf(const uint16_t* values, int64_t count) {
  // Exponent bits all ones <=> NaN or inf; a branch-free OR over the masked bits vectorises.
  uint16_t bad = 0;
  for (int64_t i = 0; i < count; ++i) bad |= static_cast<uint16_t>((values[i] & 0x7c00u) == 0x7c00u);
  return bad == 0;
}

bool IdsInRange(const int32_t* ids, int64_t count, int32_t limit) {
  return GetKernels().ids_in_range(ids, count, limit);
}

Dataset MakeDataset(const void* data, int64_t n, int64_t dim, Storage storage, Metric metric, float scale,
                    float offset) {
  Dataset d;
  d.data = static_cast<const uint8_t*>(data);
  d.n = n;
  d.dim = dim;
  d.storage = storage;
  d.metric = metric;
  d.row_bytes = dim * (storage == Storage::kFloat32 ? 4 : storage == Storage::kFloat16 ? 2 : 1);
  const int s = StorageIndex(storage);
  const int m = metric == Metric::kL2 ? 0 : 1;
  d.pair = GetKernels().pair[s][m];
  d.query = GetKernels().query[s][m];
  if (storage == Storage::kUint8) {
    d.scale = scale;
    d.offset = offset;
    d.factor = scale * scale;
  }
  return d;
}

void Dataset::PrepareQuery(const float* query, float* out) const {
  if (storage != Storage::kUint8) {
    std::memcpy(out, query, dim * sizeof(float));
    return;
  }
  const float inverse = 1.f / scale;
  for (int64_t j = 0; j < dim; ++j) out[j] = (query[j] - offset) * inverse;
}

void Dataset::RowAsQuery(int64_t i, float* out) const {
  if (storage == Storage::kUint8) {
    const uint8_t* codes = static_cast<const uint8_t*>(Row(i));
    for (int64_t j = 0; j < dim; ++j) out[j] = static_cast<float>(codes[j]);
  } else {
    Decode(i, out);
  }
}

void Dataset::Decode(int64_t i, float* out) const {
  switch (storage) {
    case Storage::kFloat32:
      std::memcpy(out, Row(i), dim * sizeof(float));
      break;
    case Storage::kFloat16: {
      const uint16_t* halves = static_cast<const uint16_t*>(Row(i));
      for (int64_t j = 0; j < dim; ++j) out[j] = HalfToFloat(halves[j]);
      break;
    }
    case Storage::kUint8: {
      const uint8_t* codes = static_cast<const uint8_t*>(Row(i));
      for (int64_t j = 0; j < dim; ++j) out[j] = offset + scale * static_cast<float>(codes[j]);
      break;
    }
  }
}

}  // namespace fanng
}  // namespace hybrid_keras
