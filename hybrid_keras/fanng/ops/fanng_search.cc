// FANNG backtracking search (Harwood & Drummond, CVPR 2016), one query at a time.
//
// Every vertex whose distance has been computed sits in a min-heap (the "frontier") and
// keeps a cursor into its edge list. Each step takes the closest vertex that still has an
// unexplored edge and follows its next edge(s) (see kEdgesPerStep). Edges are stored
// shortest first, so the next edge of the closest vertex is the most promising unexplored
// move; when it leads nowhere new, the search naturally falls back ("backtracks") to the
// next edge or the next vertex.
//
// Two stopping rules. The paper's is the distance budget alone: every query computes
// `budget` distances (a budget >= n is an exhaustive search of everything reachable from
// the entry points). With a pool (`ef`, as hnswlib calls it) the search keeps the ef best
// vertices seen and also stops once the closest vertex with unexplored edges is farther
// than all of them: easy queries finish early and hard ones go on, which buys more recall
// per average distance than a fixed budget. Vertices farther than the whole pool when
// first seen are never expanded under that rule, so they do not enter the frontier.
//
// The loop is where query time goes, so it follows the habits that make hnswlib fast:
// flat arrays; the visited set as epoch stamps reused across queries (no clearing, no
// hashing); prefetch of the vectors about to be needed; SIMD distances; small POD heaps,
// bounded at k for the results. Buffers are thread-local and only grow.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "fanng_core.h"

namespace hybrid_keras {
namespace fanng {

namespace {

// Frontier entries are single 64-bit keys: the distance mapped to an unsigned integer
// with the same order (sign flip trick for IEEE floats) in the high half, the vertex id in
// the low half. One integer compare orders by (distance, id), and the heap moves 8-byte
// values; that alone made queries ~12% faster than a 12-byte struct with a comparator.
inline uint64_t FrontierKey(float distance, int32_t vertex) {
  uint32_t bits;
  std::memcpy(&bits, &distance, sizeof bits);
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(vertex);
}

inline int32_t FrontierVertex(uint64_t key) { return static_cast<int32_t>(key & 0xffffffffu); }

struct Candidate {
  float distance;
  int32_t id;
};

// Max-heap order for the k best: the worst result sits on top, ready to be replaced.
struct CandidateLess {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.distance < b.distance || (a.distance == b.distance && a.id < b.id);
  }
};

// Edges followed per step. The paper follows one; following the next few unexplored
// edges of the best vertex together lets their vectors load from memory in parallel
// (a lone step waits for one cache miss at a time). Their order is unchanged, and a
// query is memory-bound: on held-out SIFT (200k x 128, uint8, max_degree 32) recall per
// ef was the same for 1, 4, 8, 16 and 32 edges per step, while queries/s rose ~1.2x from
// 1 to 4 and another ~1.3x from 4 to 16 (32: no further gain).
constexpr int kEdgesPerStep = 16;

inline void PrefetchVector(const void* row, int64_t row_bytes) {
  // The first lines are what the distance kernel touches first; the hardware prefetcher
  // follows the rest of a sequential row once it sees the stream start. Cap the explicit
  // prefetches so very wide vectors do not flood the load queue.
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = std::min<int64_t>(row_bytes, 8 * 64);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 3);
}

// NaN distances (possible with finite but huge inputs under the inner product, e.g.
// inf + -inf in the sum) would break every ordering below; treat them as infinitely far.
inline float Sanitize(float d) { return d == d ? d : std::numeric_limits<float>::infinity(); }

}  // namespace

struct SearchScratch {
  // Per vertex: (epoch << 16) | index of its next unexplored edge. The high half equals
  // the current epoch exactly for vertices visited by the current query, so a new epoch
  // marks everything unvisited in O(1); the array is only cleared when it grows or the
  // 16-bit epoch wraps (every 65535 queries). The edge cursor lives next to the visited
  // mark, so the frontier heap needs no per-entry cursor.
  std::vector<uint32_t> state;
  uint32_t epoch = 0;
  std::vector<uint64_t> frontier;  // min-heap of FrontierKey
  std::vector<Candidate> best;     // max-heap of the k best
  std::vector<uint8_t> codes;      // the query as uint8 codes, when it is exactly integral
};

SearchScratch& ThreadLocalSearchScratch() {
  static thread_local SearchScratch scratch;
  return scratch;
}

namespace {

// True when the prepared query is a row of codes: every value an integer in [0, 255].
// Such a query (SIFT against SIFT, or a stored row during insertion) is then compared in
// the exact integer arithmetic of the pair kernel, about four times fewer instructions per
// distance than widening every code to float. Squares of integer differences and their
// partial sums are exact in float32 up to 2^24 (dim <= 258 at worst), so for such queries
// both kernels give the same distances; beyond that the integer sum is the exact one.
bool QueryAsCodes(const Dataset& data, const float* query, std::vector<uint8_t>& codes) {
  if (data.storage != Storage::kUint8) return false;
  codes.resize(data.dim);
  for (int64_t j = 0; j < data.dim; ++j) {
    const float x = query[j];
    if (!(x >= 0.f && x <= 255.f)) return false;
    const uint8_t code = static_cast<uint8_t>(x);
    if (static_cast<float>(code) != x) return false;
    codes[j] = code;
  }
  return true;
}

// The search proper; `distance(i)` is the query's distance to stored row i.
template <typename DistanceToRow>
bool Search(const Dataset& data, const int32_t* neighbours, int64_t max_degree, const int32_t* entry_points,
            int64_t entry_count, const DistanceToRow& distance_to, int k, int64_t budget, int64_t ef,
            SearchScratch& scratch, int32_t* ids_out, float* distances_out) {
  const int64_t n = data.n;
  const int64_t m = max_degree;  // at most 65535 (checked by the op) so a cursor fits 16 bits

  if (static_cast<int64_t>(scratch.state.size()) < n) {
    scratch.state.assign(n, 0);
    scratch.epoch = 0;
  }
  if (++scratch.epoch == 0x10000) {
    std::fill(scratch.state.begin(), scratch.state.end(), 0);
    scratch.epoch = 1;
  }
  const uint32_t tag = scratch.epoch << 16;
  uint32_t* state = scratch.state.data();
  std::vector<uint64_t>& frontier = scratch.frontier;
  std::vector<Candidate>& best = scratch.best;
  frontier.clear();
  best.clear();
  const std::greater<uint64_t> frontier_order;  // min-heap
  const CandidateLess candidate_less;

  // `best` holds the pool: the k results, or the ef best seen under the pool rule.
  const bool pool_rule = ef > 0;
  const int64_t pool = pool_rule ? std::max<int64_t>(k, ef) : k;
  // Returns whether (d, id) entered the pool.
  auto offer = [&](float d, int32_t id) {
    if (static_cast<int64_t>(best.size()) < pool) {
      best.push_back({d, id});
      std::push_heap(best.begin(), best.end(), candidate_less);
      return true;
    }
    if (candidate_less({d, id}, best.front())) {
      std::pop_heap(best.begin(), best.end(), candidate_less);
      best.back() = {d, id};
      std::push_heap(best.begin(), best.end(), candidate_less);
      return true;
    }
    return false;
  };
  // Under the pool rule: the frontier key beyond which nothing can still improve the pool.
  auto pool_limit = [&]() {
    return static_cast<int64_t>(best.size()) < pool ? std::numeric_limits<uint64_t>::max()
                                                     : FrontierKey(best.front().distance, -1);
  };

  // Every entry point starts in the pool and the frontier; the search then expands the
  // closest, so far entry points cost one distance each and are never walked from.
  int64_t computed = 0;
  for (int64_t e = 0; e < entry_count && computed < budget; ++e) {
    const int32_t entry = entry_points[e];
    if ((state[entry] & 0xffff0000u) == tag) continue;  // listed twice
    state[entry] = tag;
    const float entry_distance = Sanitize(distance_to(entry));
    ++computed;
    offer(entry_distance, entry);
    if (m > 0) frontier.push_back(FrontierKey(entry_distance, entry));
  }
  std::make_heap(frontier.begin(), frontier.end(), frontier_order);

  int32_t batch[kEdgesPerStep];
  bool ids_valid = true;
  while (computed < budget && !frontier.empty()) {
    if (pool_rule && frontier.front() > pool_limit()) break;
    // The closest vertex with unexplored edges: collect its next few unvisited targets
    // and start loading their vectors before computing any distance.
    const int32_t v = FrontierVertex(frontier.front());
    const int32_t* row = neighbours + v * m;
    int64_t j = state[v] & 0xffffu;
    int count = 0;
    while (j < m && row[j] >= 0 && count < kEdgesPerStep) {
      const int32_t u = row[j++];
      if (u >= n) {  // a corrupt graph: never read outside the arrays
        ids_valid = false;
        continue;
      }
      if ((state[u] & 0xffff0000u) != tag) {
        state[u] = tag;  // visited, cursor 0
        PrefetchVector(data.Row(u), data.row_bytes);
        batch[count++] = u;
      }
    }
    if (j < m && row[j] >= 0) {
      state[v] = tag | static_cast<uint32_t>(j);  // v keeps its (unchanged) place in the heap
    } else {
      std::pop_heap(frontier.begin(), frontier.end(), frontier_order);
      frontier.pop_back();
    }
    for (int b = 0; b < count && computed < budget; ++b) {
      const int32_t u = batch[b];
      const float d = Sanitize(distance_to(u));
      ++computed;
      if (!offer(d, u) && pool_rule) continue;
      // If u turns out closest, its edge list is read next.
      __builtin_prefetch(neighbours + u * m, 0, 3);
      frontier.push_back(FrontierKey(d, u));
      std::push_heap(frontier.begin(), frontier.end(), frontier_order);
    }
  }

  std::sort_heap(best.begin(), best.end(), candidate_less);
  const int found = static_cast<int>(std::min<int64_t>(best.size(), k));
  for (int i = 0; i < found; ++i) {
    ids_out[i] = best[i].id;
    distances_out[i] = best[i].distance;
  }
  for (int i = found; i < k; ++i) {
    ids_out[i] = -1;
    distances_out[i] = std::numeric_limits<float>::infinity();
  }
  return ids_valid;
}

}  // namespace

bool SearchOne(const Dataset& data, const int32_t* neighbours, int64_t max_degree, const int32_t* entry_points,
               int64_t entry_count, const float* query, int k, int64_t budget, int64_t ef, SearchScratch& scratch,
               int32_t* ids_out, float* distances_out) {
  if (QueryAsCodes(data, query, scratch.codes)) {
    const uint8_t* codes = scratch.codes.data();
    auto distance_to = [&](int64_t i) { return data.factor * data.pair(codes, data.Row(i), data.dim); };
    return Search(data, neighbours, max_degree, entry_points, entry_count, distance_to, k, budget, ef, scratch, ids_out,
                  distances_out);
  } else {
    auto distance_to = [&](int64_t i) { return data.QueryDistance(query, i); };
    return Search(data, neighbours, max_degree, entry_points, entry_count, distance_to, k, budget, ef, scratch, ids_out,
                  distances_out);
  }
}

}  // namespace fanng
}  // namespace hybrid_keras
