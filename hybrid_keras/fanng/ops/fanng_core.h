// FANNG graph index: the algorithm, free of TensorFlow types.
//
// The op kernels in fanng_ops.cc validate tensors and hand raw pointers to the functions
// declared here. Keeping the algorithm apart from the TF plumbing lets it be read (and
// reasoned about for determinism) on its own.
//
// Conventions shared by build and search:
//  * vectors are a dense row-major float32 [n, dim] array;
//  * the graph is a dense row-major int32 [n, max_degree] array; each row lists a
//    vertex's out-edges by increasing length, then -1 padding (search stops reading a
//    row at its first -1);
//  * "distance" is squared L2 for Metric::kL2 and the negative inner product for
//    Metric::kInnerProduct, so smaller always means closer.

#ifndef HYBRID_KERAS_FANNG_OPS_FANNG_CORE_H_
#define HYBRID_KERAS_FANNG_OPS_FANNG_CORE_H_

#include <cstdint>
#include <functional>
#include <vector>

namespace hybrid_keras {
namespace fanng {

enum class Metric { kL2, kInnerProduct };

// Distance kernel; the AVX2/FMA or portable version is picked once at load time.
using DistanceFn = float (*)(const float* a, const float* b, int64_t dim);
DistanceFn GetDistanceFn(Metric metric);

// True when every value is finite (no NaN, no +-inf). Vectorised, so that validating a
// large index on every search call stays cheap next to the search itself.
bool AllFinite(const float* values, int64_t count);

// True when every id is in [-1, limit): the neighbour table's valid range.
bool IdsInRange(const int32_t* ids, int64_t count, int32_t limit);

// fn(begin, end) is called for disjoint ranges covering [0, total), possibly on several
// threads at once. Every parallel step of the build is written so that its result does
// not depend on how the range is split or on thread timing, which is what makes a build
// reproducible for a given seed whatever the thread count.
using ParallelFor =
    std::function<void(int64_t total, int64_t cost_per_unit, const std::function<void(int64_t, int64_t)>& fn)>;

struct Dataset {
  const float* data;
  int64_t n;
  int64_t dim;
  DistanceFn distance;

  const float* Row(int64_t i) const { return data + i * dim; }
  float Distance(int64_t i, int64_t j) const { return distance(Row(i), Row(j), dim); }
};

struct BuildOptions {
  int max_degree = 32;
  Metric metric = Metric::kL2;
  uint64_t seed = 0;
  int candidates = 0;         // candidate list length before pruning (half kNN, half reverse); 0: auto
  int refine_iterations = 1;  // traverse-add passes over all vertices
  bool connect = true;        // make every vertex reachable from the entry
};

// Fills neighbours_out[n * max_degree] and *entry_out.
void BuildGraph(const Dataset& data, const BuildOptions& options, const ParallelFor& parallel_for,
                int32_t* neighbours_out, int32_t* entry_out);

// Per-thread reusable search buffers (visited stamps, frontier heap, result heap), so a
// query allocates nothing once a thread has warmed up.
struct SearchScratch;
SearchScratch& ThreadLocalSearchScratch();

// Backtracking best-first search for one query. Writes k ids (-1 padded) and k distances
// (+inf padded), ascending. Stops after `budget` distances or, when ef > 0, once no
// unexplored vertex is closer than the ef best seen (see fanng_search.cc).
void SearchOne(const Dataset& data, const int32_t* neighbours, int64_t max_degree, int32_t entry,
               const float* query, int k, int64_t budget, int64_t ef, SearchScratch& scratch,
               int32_t* ids_out, float* distances_out);

}  // namespace fanng
}  // namespace hybrid_keras

#endif  // HYBRID_KERAS_FANNG_OPS_FANNG_CORE_H_
