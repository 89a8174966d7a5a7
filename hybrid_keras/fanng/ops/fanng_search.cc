// FANNG backtracking search (Harwood & Drummond, CVPR 2016), one query at a time.
//
// Every vertex whose distance has been computed sits in a min-heap (the "frontier") with
// a cursor into its edge list. Each step takes the closest vertex that still has an
// unexplored edge and follows its next edge(s) (see kEdgesPerStep). Edges are stored
// shortest first, so the next edge of the closest vertex is the most promising unexplored
// move; when it leads nowhere new, the search naturally falls back ("backtracks") to the
// next edge or the next vertex. The only stopping rule is the distance budget, which makes recall a smooth
// function of the budget and a budget >= n an exhaustive search of everything reachable.
//
// The loop is where query time goes, so it follows the habits that make hnswlib fast:
// flat arrays, visited set as epoch stamps reused across queries (no clearing, no hashing),
// prefetch of the vector most likely to be needed next, SIMD distances, and a bounded
// max-heap for the k best. Buffers are thread-local and only grow.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fanng_core.h"

namespace hybrid_keras {
namespace fanng {

namespace {

struct FrontierEntry {
  float distance;
  int32_t vertex;
  int32_t next_edge;  // index into the vertex's row of the next edge to follow
};

struct FrontierGreater {
  bool operator()(const FrontierEntry& a, const FrontierEntry& b) const {
    return a.distance > b.distance || (a.distance == b.distance && a.vertex > b.vertex);
  }
};

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
// (a lone step waits for one cache miss at a time). Their order is unchanged and their
// recall per distance computed is the same within noise, at ~1.3x the queries/s.
constexpr int kEdgesPerStep = 4;

inline void PrefetchVector(const float* row, int64_t dim) {
  // The first lines are what the distance kernel touches first; the hardware prefetcher
  // follows the rest of a sequential row once it sees the stream start. Cap the explicit
  // prefetches so very wide vectors do not flood the load queue.
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = std::min<int64_t>(dim * static_cast<int64_t>(sizeof(float)), 8 * 64);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 3);
}

// NaN distances (possible with finite but huge inputs under the inner product, e.g.
// inf + -inf in the sum) would break every ordering below; treat them as infinitely far.
inline float Sanitize(float d) { return d == d ? d : std::numeric_limits<float>::infinity(); }

}  // namespace

struct SearchScratch {
  // stamps[v] == epoch <=> v visited by the current query. 16-bit stamps halve the
  // array's cache footprint (it is probed for every edge followed); the price is one
  // clearing pass every 65535 queries.
  std::vector<uint16_t> stamps;
  uint16_t epoch = 0;
  std::vector<FrontierEntry> frontier;
  std::vector<Candidate> best;
};

SearchScratch& ThreadLocalSearchScratch() {
  static thread_local SearchScratch scratch;
  return scratch;
}

void SearchOne(const Dataset& data, const int32_t* neighbours, int64_t max_degree, int32_t entry,
               const float* query, int k, int64_t budget, SearchScratch& scratch, int32_t* ids_out,
               float* distances_out) {
  const int64_t n = data.n;
  const int64_t dim = data.dim;
  const int64_t m = max_degree;
  const DistanceFn distance = data.distance;

  // A new epoch marks every vertex unvisited in O(1). The array is only cleared when it
  // grows (a larger index than this thread has seen) or when the epoch wraps.
  if (static_cast<int64_t>(scratch.stamps.size()) < n) {
    scratch.stamps.assign(n, 0);
    scratch.epoch = 0;
  }
  if (++scratch.epoch == 0) {
    std::fill(scratch.stamps.begin(), scratch.stamps.end(), 0);
    scratch.epoch = 1;
  }
  const uint16_t epoch = scratch.epoch;
  uint16_t* stamps = scratch.stamps.data();
  std::vector<FrontierEntry>& frontier = scratch.frontier;
  std::vector<Candidate>& best = scratch.best;
  frontier.clear();
  best.clear();
  const FrontierGreater frontier_greater;
  const CandidateLess candidate_less;

  auto offer = [&](float d, int32_t id) {
    if (static_cast<int>(best.size()) < k) {
      best.push_back({d, id});
      std::push_heap(best.begin(), best.end(), candidate_less);
    } else if (candidate_less({d, id}, best.front())) {
      std::pop_heap(best.begin(), best.end(), candidate_less);
      best.back() = {d, id};
      std::push_heap(best.begin(), best.end(), candidate_less);
    }
  };

  stamps[entry] = epoch;
  const float entry_distance = Sanitize(distance(query, data.Row(entry), dim));
  int64_t computed = 1;
  offer(entry_distance, entry);
  if (m > 0) frontier.push_back({entry_distance, entry, 0});

  int32_t batch[kEdgesPerStep];
  while (computed < budget && !frontier.empty()) {
    FrontierEntry& top = frontier.front();
    const int32_t* row = neighbours + top.vertex * m;
    int64_t j = top.next_edge;
    int count = 0;
    while (j < m && row[j] >= 0 && count < kEdgesPerStep) {
      const int32_t u = row[j++];
      if (stamps[u] != epoch) {
        stamps[u] = epoch;
        PrefetchVector(data.Row(u), dim);
        batch[count++] = u;
      }
    }
    if (j < m && row[j] >= 0) {
      top.next_edge = static_cast<int32_t>(j);
    } else {
      std::pop_heap(frontier.begin(), frontier.end(), frontier_greater);
      frontier.pop_back();
    }
    for (int b = 0; b < count && computed < budget; ++b) {
      const int32_t u = batch[b];
      const float d = Sanitize(distance(query, data.Row(u), dim));
      ++computed;
      offer(d, u);
      __builtin_prefetch(neighbours + u * m, 0, 3);
      frontier.push_back({d, u, 0});
      std::push_heap(frontier.begin(), frontier.end(), frontier_greater);
    }
  }

  std::sort_heap(best.begin(), best.end(), candidate_less);
  const int found = static_cast<int>(best.size());
  for (int i = 0; i < found; ++i) {
    ids_out[i] = best[i].id;
    distances_out[i] = best[i].distance;
  }
  for (int i = found; i < k; ++i) {
    ids_out[i] = -1;
    distances_out[i] = std::numeric_limits<float>::infinity();
  }
}

}  // namespace fanng
}  // namespace hybrid_keras
