// FANNG graph index: the algorithm, free of TensorFlow types.
//
// The op kernels in fanng_ops.cc validate tensors and hand raw pointers to the functions
// declared here. Keeping the algorithm apart from the TF plumbing lets it be read (and
// reasoned about for determinism) on its own.
//
// Conventions shared by build, insertion and search:
//  * vectors are a dense row-major [n, dim] array stored as float32, float16 or uint8
//    (uint8 with one scale and offset for the whole index: value = offset + scale * code);
//  * the graph is a dense row-major int32 [n, max_degree] array; each row lists a
//    vertex's out-edges by increasing length, then -1 padding (search stops reading a
//    row at its first -1);
//  * "distance" is squared L2 for Metric::kL2 and the negative inner product for
//    Metric::kInnerProduct, so smaller always means closer; it is computed on the
//    dequantised values, so every storage type has the same meaning of distance;
//  * searches start from a list of entry points (the first is the vertex nearest the
//    mean; the rest, when asked for, are vertices near k-means centroids).

#ifndef HYBRID_KERAS_FANNG_OPS_FANNG_CORE_H_
#define HYBRID_KERAS_FANNG_OPS_FANNG_CORE_H_

#include <cstdint>
#include <functional>
#include <vector>

namespace hybrid_keras {
namespace fanng {

enum class Metric { kL2, kInnerProduct };
enum class Storage { kFloat32, kFloat16, kUint8 };

// float32 distance kernel; the AVX2/FMA or portable version is picked once at load time.
using DistanceFn = float (*)(const float* a, const float* b, int64_t dim);
DistanceFn GetDistanceFn(Metric metric);

// Kernels over stored rows: PairFn compares two stored rows, QueryFn a float query (in
// the rows' units, see Dataset::PrepareQuery) with one stored row. Both orders of a pair
// give bit-identical results, which the build relies on.
using PairFn = float (*)(const void* a, const void* b, int64_t dim);
using QueryFn = float (*)(const float* query, const void* row, int64_t dim);

// True when every value is finite (no NaN, no +-inf). Vectorised, so that validating a
// large index on every search call stays cheap next to the search itself.
bool AllFinite(const float* values, int64_t count);
// The same for float16 values given as their raw bits.
bool AllFiniteHalf(const uint16_t* values, int64_t count);

// True when every id is in [-1, limit): the neighbour table's valid range.
bool IdsInRange(const int32_t* ids, int64_t count, int32_t limit);

// fn(begin, end) is called for disjoint ranges covering [0, total), possibly on several
// threads at once. Every parallel step of the build is written so that its result does
// not depend on how the range is split or on thread timing, which is what makes a build
// reproducible for a given seed whatever the thread count.
using ParallelFor =
    std::function<void(int64_t total, int64_t cost_per_unit, const std::function<void(int64_t, int64_t)>& fn)>;

// The stored vectors and how to compare them. Made by MakeDataset, which picks the kernels.
struct Dataset {
  const uint8_t* data = nullptr;
  int64_t n = 0;
  int64_t dim = 0;
  int64_t row_bytes = 0;
  Storage storage = Storage::kFloat32;
  Metric metric = Metric::kL2;
  float scale = 1.f;   // uint8 only: value = offset + scale * code
  float offset = 0.f;
  PairFn pair = nullptr;
  QueryFn query = nullptr;
  float factor = 1.f;  // multiplies every kernel result (uint8 L2 works in code units: scale^2)

  const void* Row(int64_t i) const { return data + i * row_bytes; }
  float Distance(int64_t i, int64_t j) const { return factor * pair(Row(i), Row(j), dim); }
  // `prepared` comes from PrepareQuery or RowAsQuery.
  float QueryDistance(const float* prepared, int64_t i) const { return factor * query(prepared, Row(i), dim); }
  // Whether a query must be transformed before QueryDistance (uint8: into code units).
  bool QueryNeedsPreparing() const { return storage == Storage::kUint8; }
  // out[dim] = the query in the rows' units.
  void PrepareQuery(const float* query, float* out) const;
  // out[dim] = stored row i as a prepared query (exact: no round trip through values).
  void RowAsQuery(int64_t i, float* out) const;
  // out[dim] = the dequantised values of row i.
  void Decode(int64_t i, float* out) const;
};

// `scale` must be positive and finite for uint8 storage; uint8 supports Metric::kL2 only
// (the op checks both).
Dataset MakeDataset(const void* data, int64_t n, int64_t dim, Storage storage, Metric metric, float scale,
                    float offset);

// Most out-edges per vertex that build and insertion accept. Pruning a candidate list
// costs about candidates * max_degree distances per vertex, so build time grows about 4x
// per doubling of max_degree; 256 keeps a build over 100k vectors within minutes (graphs
// beyond 64 edges bought no recall per distance in measurements).
constexpr int kMaxBuildDegree = 256;

struct BuildOptions {
  int max_degree = 32;
  Metric metric = Metric::kL2;
  uint64_t seed = 0;
  int candidates = 0;         // candidate list length before pruning (half kNN, half reverse); 0: auto
  int refine_iterations = 1;  // traverse-add passes over all vertices
  bool connect = true;        // make every vertex reachable from the entry
  int entry_points = 1;       // 1: the vertex nearest the mean; more: plus vertices near k-means centroids
};

// Fills neighbours_out[n * max_degree] and entry_points_out[options.entry_points]
// (entry_points_out[0] is the vertex nearest the mean; the rest may repeat it when the
// data have fewer distinct centroids than asked for).
void BuildGraph(const Dataset& data, const BuildOptions& options, const ParallelFor& parallel_for,
                int32_t* neighbours_out, int32_t* entry_points_out);

struct InsertOptions {
  int candidates = 0;  // as BuildOptions::candidates; 0: auto
  int ef = 0;          // pool of the search that finds a new vertex's candidates; 0: auto
};

// Links rows [start, n) of `data` into the graph over rows [0, start): neighbours[n *
// max_degree] holds that graph in its first `start` rows (the rest are ignored) and is
// updated in place. Every new vertex gets its edges from the occlusion rule over its
// nearest linked vertices and earlier new ones, reverse edges to it, and an edge from
// where a greedy walk from entry_points[0] towards it stops. Deterministic for any
// thread count.
void InsertVertices(const Dataset& data, int max_degree, const InsertOptions& options, const int32_t* entry_points,
                    int64_t entry_count, int64_t start, const ParallelFor& parallel_for, int32_t* neighbours);

// Per-thread reusable search buffers (visited stamps, frontier heap, result heap), so a
// query allocates nothing once a thread has warmed up.
struct SearchScratch;
SearchScratch& ThreadLocalSearchScratch();

// Backtracking best-first search for one query (prepared with Dataset::PrepareQuery when
// Dataset::QueryNeedsPreparing()). Starts from every entry point (duplicates skipped).
// Writes k ids (-1 padded) and k distances (+inf padded), ascending. Stops after `budget`
// distances or, when ef > 0, once no unexplored vertex is closer than the ef best seen
// (see fanng_search.cc). Every edge id read is bounds-checked: an id >= n is skipped and
// makes the function return false (the op then reports the graph as invalid), so a
// search never reads outside the arrays even when the caller skipped validating them.
bool SearchOne(const Dataset& data, const int32_t* neighbours, int64_t max_degree, const int32_t* entry_points,
               int64_t entry_count, const float* query, int k, int64_t budget, int64_t ef, SearchScratch& scratch,
               int32_t* ids_out, float* distances_out);

}  // namespace fanng
}  // namespace hybrid_keras

#endif  // HYBRID_KERAS_FANNG_OPS_FANNG_CORE_H_
