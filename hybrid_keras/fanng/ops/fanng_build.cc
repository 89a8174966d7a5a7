// FANNG graph construction.
//
// Steps (each explained where it is implemented):
//   1. entry: the vertex nearest to the mean, so every search starts near the centre;
//   2. candidates: an approximate k-nearest-neighbour list per vertex (exact brute force
//      for small n, NN-descent otherwise), plus the reverse edges;
//   3. occlusion pruning of each candidate list down to max_degree edges;
//   4. traverse-add refinement: greedy walks towards every vertex, from the entry and
//      from a random vertex, adding an edge where a walk gets stuck;
//   5. reachability: every vertex gets a path from the entry;
//   6. entry points: the entry plus, when asked for, vertices near k-means centroids.
//
// InsertVertices (at the end) links new vertices into a built graph with the same
// occlusion rule (Occludes, below: the one place the rule is written) and the same edge
// repair (AddEdge) as the build.
//
// Determinism: every parallel step either writes only to its own vertex's data, or merges
// proposals with an order-independent rule (keep the K smallest (distance, id) pairs), so
// the graph depends on the seed alone, never on the thread count or scheduling. Steps that
// change shared rows in an order-dependent way (4 and 5) apply their changes sequentially
// in a seeded order after a parallel, read-only search phase over a fixed-size batch.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "fanng_core.h"

namespace hybrid_keras {
namespace fanng {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Below this size the exact kNN graph costs less than NN-descent's bookkeeping and gives
// the best possible candidates.
constexpr int64_t kBruteForceMaxN = 5000;

// SplitMix64 finaliser: a cheap, well-mixed hash, used both as an RNG step and to give
// every (seed, iteration, vertex, ...) tuple its own independent stream.
inline uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(Mix(seed)) {}
  uint64_t Next() {
    state += 0x9E3779B97F4A7C15ULL;
    return Mix(state);
  }
  // Modulo bias is below 2^-40 for the sizes used here; irrelevant for sampling.
  uint64_t Below(uint64_t bound) { return Next() % bound; }
};

// Total order on (distance, id): ties always resolve the same way, which keeps sorted
// lists, selections and merges reproducible.
inline bool Closer(float da, int32_t a, float db, int32_t b) { return da < db || (da == db && a < b); }

struct Neighbour {
  float distance;
  int32_t id;
  bool operator<(const Neighbour& o) const { return Closer(distance, id, o.distance, o.id); }
};

inline float Sanitize(float d) { return d == d ? d : kInf; }

// The occlusion (relative-neighbourhood) rule, the one place it is written: the edge p->q
// occludes p->r when q is nearer to p than r is and clearly nearer to r than p is,
// d(p,q) < d(p,r) and kOcclusionSlack * d(q,r) < d(p,r): a search standing at p reaches
// r through q anyway. d(q,r) is a callable, so it is only computed when the first
// condition holds.
//
// The slack (on squared distances; about 1.1 on distances, a milder form of DiskANN's
// robust-prune alpha, Subramanya et al., NeurIPS 2019) keeps some longer edges the
// paper's strict rule (slack 1) drops; queries from outside the data, which arrive from
// directions the base never does, need them most. On BSDS500 SIFT (200k x 128, max_degree
// 32) the mean degree went from 15 to 25 and held-out queries/s at recall@10 0.99 rose
// ~1.15x (0.95: ~1.2x) for ~10% more build time; slack 1.1 and 1.3 were within a few
// percent of it, 1.44 (DiskANN's 1.2) was slower at recall 0.90..0.95. The slack is for
// L2 only: inner-product "distances" may be negative, where a factor has no such meaning.
constexpr float kOcclusionSlack = 1.2f;

inline float OcclusionSlack(Metric metric) { return metric == Metric::kL2 ? kOcclusionSlack : 1.f; }

template <typename QR>
inline bool Occludes(float pq, float pr, const QR& qr, float slack) {
  return pq < pr && slack * qr() < pr;
}

// Spin-wait hint; the per-vertex locks are held for a few dozen instructions.
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class Builder {
 public:
  Builder(const Dataset& data, const BuildOptions& options, const ParallelFor& parallel_for)
      : data_(data),
        opt_(options),
        parallel_for_(parallel_for),
        n_(data.n),
        m_(options.max_degree),
        slack_(OcclusionSlack(data.metric)) {}

  void Run(int32_t* neighbours_out, int32_t* entry_points_out) {
    entry_ = FindEntry();
    entry_points_ = ChooseEntryPoints();
    graph_.assign(n_ * m_, -1);
    lengths_.assign(n_ * m_, kInf);
    degree_.assign(n_, 0);
    if (n_ > 1) {
      // The candidate list of a vertex (what pruning sees) is its k nearest neighbours plus
      // up to `candidates - k` reverse neighbours; half of each is a good balance, since
      // reverse edges are what link sparse regions back to dense ones.
      const int64_t candidates = opt_.candidates > 0 ? opt_.candidates : DefaultCandidates(m_);
      const int64_t k = std::min<int64_t>(std::max<int64_t>(1, (candidates + 1) / 2), n_ - 1);
      const int64_t reverse_cap = std::max<int64_t>(0, candidates - k);
      std::vector<int32_t> knn_ids;
      std::vector<float> knn_dist;
      // NN-descent pays off only when the lists are a small part of the data.
      if (n_ <= kBruteForceMaxN || 4 * k >= n_) {
        BruteForceKnn(k, &knn_ids, &knn_dist);
      } else {
        NnDescent(k, &knn_ids, &knn_dist);
      }
      PruneCandidates(k, reverse_cap, knn_ids, knn_dist);
      knn_ids = std::vector<int32_t>();
      knn_dist = std::vector<float>();
      for (int pass = 0; pass < opt_.refine_iterations; ++pass) Refine(pass);
      if (opt_.connect) Connect();
    }
    std::copy(graph_.begin(), graph_.end(), neighbours_out);
    std::copy(entry_points_.begin(), entry_points_.end(), entry_points_out);
  }

  // Links rows [start, n) into the graph held in neighbours[0, start) (see InsertVertices).
  // Batches of new vertices search the frozen graph in parallel for their candidates,
  // which include the other vertices of their batch (so a batch of near-duplicates, such
  // as a new class of examples, links up among itself); the edges are then applied one
  // vertex at a time in row order: the occlusion rule over the candidates gives the
  // vertex's row, every kept edge gets its reverse edge through AddEdge, and greedy
  // walks towards each new vertex add an edge where they get stuck, as in the build's
  // traverse-add; the build's reachability step ends it. The result does not depend on
  // the thread count.
  void Insert(int32_t* neighbours, const int32_t* entry_points, int64_t entry_count, int64_t start,
              const InsertOptions& insert) {
    entry_ = entry_points[0];
    entry_points_.assign(entry_points, entry_points + entry_count);
    graph_.assign(neighbours, neighbours + n_ * m_);
    degree_.assign(n_, 0);
    for (int64_t v = 0; v < n_; ++v) {
      int32_t* row = graph_.data() + v * m_;
      int32_t d = 0;
      if (v < start) {
        while (d < m_ && row[d] >= 0) ++d;
      }
      std::fill(row + d, row + m_, -1);
      degree_[v] = d;
    }
    // Edge lengths are needed only for rows that AddEdge touches: computed on first use.
    lengths_.assign(n_ * m_, kInf);
    lengths_known_.assign(n_, 0);
    std::fill(lengths_known_.begin() + start, lengths_known_.end(), 1);  // new rows start empty

    const int64_t pool = insert.candidates > 0 ? insert.candidates : DefaultCandidates(m_);
    const int64_t ef = insert.ef > 0 ? insert.ef : pool;
    constexpr int64_t kBatch = 256;
    std::vector<std::vector<Neighbour>> found(kBatch);
    std::vector<int32_t> stuck(3 * kBatch);
    const uint64_t stream = Mix(0x1A5E27000ULL + static_cast<uint64_t>(start));
    std::vector<Neighbour> candidates, kept;
    for (int64_t first = start; first < n_; first += kBatch) {
      const int64_t count = std::min(kBatch, n_ - first);
      const int64_t linked = first;  // rows [0, first) are in the graph now
      const int64_t k = std::min<int64_t>(pool, linked);
      parallel_for_(count, (20 * ef + count) * data_.dim, [&](int64_t begin, int64_t end) {
        SearchScratch& scratch = ThreadLocalSearchScratch();
        std::vector<float> query(data_.dim);
        std::vector<int32_t> ids(k);
        std::vector<float> distances(k);
        for (int64_t i = begin; i < end; ++i) {
          const int64_t v = first + i;
          std::vector<Neighbour>& list = found[i];
          list.clear();
          data_.RowAsQuery(v, query.data());
          SearchOne(data_, graph_.data(), m_, entry_points, entry_count, query.data(), static_cast<int>(k), n_, ef,
                    scratch, ids.data(), distances.data());
          // Pair distances, not the query's: they are what the occlusion rule and the
          // stored edge lengths use everywhere else.
          for (int64_t j = 0; j < k; ++j) {
            if (ids[j] >= 0) list.push_back({Dist(v, ids[j]), ids[j]});
          }
          for (int64_t u = first; u < first + count; ++u) {
            if (u != v) list.push_back({Dist(v, u), static_cast<int32_t>(u)});
          }
          std::sort(list.begin(), list.end());
          if (static_cast<int64_t>(list.size()) > pool) list.resize(pool);
        }
      });
      for (int64_t i = 0; i < count; ++i) {
        const int32_t v = static_cast<int32_t>(first + i);
        // Edges earlier vertices of this batch gave v (reverse edges) compete as candidates.
        candidates = found[i];
        const int64_t base = static_cast<int64_t>(v) * m_;
        for (int32_t j = 0; j < degree_[v]; ++j) candidates.push_back({lengths_[base + j], graph_[base + j]});
        std::sort(candidates.begin(), candidates.end());
        SelectEdges(candidates, &kept);
        SetRow(v, kept);
        for (const Neighbour& e : kept) AddEdge(e.id, v, nullptr);
      }
      // The build's traverse-add walks (see Refine), from a random vertex linked before
      // this batch, plus one from the entry when it is not the nearest entry point, which
      // keeps the new vertex reachable from there.
      parallel_for_(count, 60 * m_ * data_.dim, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int32_t t = static_cast<int32_t>(first + i);
          const int32_t from = static_cast<int32_t>(Mix(stream ^ static_cast<uint64_t>(t)) % static_cast<uint64_t>(first));
          const int32_t nearest = TraverseWalks(t, from, &stuck[3 * i]);
          stuck[3 * i + 2] = nearest == entry_ ? -1 : GreedyStuck(t, entry_);
        }
      });
      for (int64_t i = 0; i < 3 * count; ++i) {
        if (stuck[i] >= 0) AddEdge(stuck[i], static_cast<int32_t>(first + i / 3), nullptr);
      }
    }
    // Edges evicted along the way (a full row drops its longest edge; an occluded edge
    // goes) can cut a vertex off, as in the build: the build's reachability step repairs it.
    Connect();
    std::copy(graph_.begin(), graph_.end(), neighbours);
  }

  static int64_t DefaultCandidates(int64_t max_degree) { return std::max<int64_t>(2 * max_degree, 32); }

 private:
  float Dist(int64_t a, int64_t b) const { return Sanitize(data_.Distance(a, b)); }

  // Row i as float32 values: the stored row itself for float32 storage, else decoded
  // into `buffer` (dim floats).
  const float* RowAsFloat(int64_t i, float* buffer) const {
    if (data_.storage == Storage::kFloat32) return static_cast<const float*>(data_.Row(i));
    data_.Decode(i, buffer);
    return buffer;
  }

  // ---------------------------------------------------------------- 1. entry vertex
  // The vertex nearest (in L2, for either metric: under the inner product the "closest"
  // vertex to the mean would be an extreme one) to the mean of all vectors.
  int32_t FindEntry() {
    const int64_t dim = data_.dim;
    std::vector<double> sum(dim, 0.0);
    std::vector<float> buffer(dim);
    for (int64_t i = 0; i < n_; ++i) {
      const float* row = RowAsFloat(i, buffer.data());
      for (int64_t j = 0; j < dim; ++j) sum[j] += row[j];
    }
    std::vector<float> mean(dim);
    for (int64_t j = 0; j < dim; ++j) mean[j] = static_cast<float>(sum[j] / static_cast<double>(n_));
    const DistanceFn l2 = GetDistanceFn(Metric::kL2);
    std::vector<float> to_mean(n_);
    parallel_for_(n_, 4 * dim, [&](int64_t begin, int64_t end) {
      std::vector<float> row(dim);
      for (int64_t i = begin; i < end; ++i) to_mean[i] = Sanitize(l2(RowAsFloat(i, row.data()), mean.data(), dim));
    });
    int32_t best = 0;
    for (int64_t i = 1; i < n_; ++i) {
      if (Closer(to_mean[i], static_cast<int32_t>(i), to_mean[best], best)) best = static_cast<int32_t>(i);
    }
    return best;
  }

  // ---------------------------------------------------------------- 6. entry points
  // out[0] is the entry; out[1..count) are the sample vertices nearest to the centroids
  // of a k-means (Lloyd) clustering of a seeded sample of the data. A search computes the
  // distance to every entry point and walks from the closest, so a query far from the
  // mean (clustered data, queries from new images) starts in its own region instead of
  // walking there from the centre. Each Lloyd step assigns points in parallel (a
  // per-point result) and updates centroids sequentially, so the choice depends on the
  // seed only. Empty clusters repeat the entry (a search skips repeats).
  std::vector<int32_t> ChooseEntryPoints() {
    const int64_t count = std::max(1, opt_.entry_points);
    std::vector<int32_t> out(count, entry_);
    if (count == 1 || n_ < 2) return out;
    constexpr int kLloydSteps = 6;
    const int64_t dim = data_.dim;
    const int64_t clusters = std::min<int64_t>(count - 1, n_);
    const int64_t sample = std::min<int64_t>(n_, std::max<int64_t>(64 * clusters, 4096));
    std::vector<int32_t> order(n_);
    std::iota(order.begin(), order.end(), 0);
    Rng rng(opt_.seed ^ Mix(0xCE27A000ULL));
    for (int64_t i = 0; i < sample; ++i) std::swap(order[i], order[i + static_cast<int64_t>(rng.Below(n_ - i))]);
    std::vector<float> points(sample * dim);
    parallel_for_(sample, 2 * dim, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) data_.Decode(order[i], points.data() + i * dim);
    });
    // The sample is in random order, so its first rows are random distinct starting centroids.
    std::vector<float> centroids(points.begin(), points.begin() + clusters * dim);
    std::vector<int32_t> label(sample);
    std::vector<float> to_centroid(sample);
    const DistanceFn l2 = GetDistanceFn(Metric::kL2);
    auto assign = [&]() {
      parallel_for_(sample, clusters * dim, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          int32_t best = 0;
          float best_d = kInf;
          for (int64_t c = 0; c < clusters; ++c) {
            const float d = Sanitize(l2(points.data() + i * dim, centroids.data() + c * dim, dim));
            if (d < best_d) {
              best_d = d;
              best = static_cast<int32_t>(c);
            }
          }
          label[i] = best;
          to_centroid[i] = best_d;
        }
      });
    };
    std::vector<double> sums(clusters * dim);
    std::vector<int64_t> sizes(clusters);
    for (int step = 0; step < kLloydSteps; ++step) {
      assign();
      std::fill(sums.begin(), sums.end(), 0.0);
      std::fill(sizes.begin(), sizes.end(), 0);
      for (int64_t i = 0; i < sample; ++i) {
        ++sizes[label[i]];
        for (int64_t j = 0; j < dim; ++j) sums[label[i] * dim + j] += points[i * dim + j];
      }
      for (int64_t c = 0; c < clusters; ++c) {
        if (sizes[c] == 0) continue;  // keeps its place; may win points next step
        for (int64_t j = 0; j < dim; ++j) {
          centroids[c * dim + j] = static_cast<float>(sums[c * dim + j] / static_cast<double>(sizes[c]));
        }
      }
    }
    assign();
    std::vector<int32_t> nearest(clusters, -1);
    for (int64_t i = 0; i < sample; ++i) {
      const int32_t c = label[i];
      if (nearest[c] < 0 || Closer(to_centroid[i], order[i], to_centroid[nearest[c]], order[nearest[c]])) {
        nearest[c] = static_cast<int32_t>(i);
      }
    }
    for (int64_t c = 0; c + 1 < count; ++c) {
      out[c + 1] = c < clusters && nearest[c] >= 0 ? order[nearest[c]] : entry_;
    }
    return out;
  }

  // The entry point a search for vertex t would walk from: the one nearest to t.
  int32_t NearestEntryPoint(int32_t t) const {
    int32_t best = entry_points_[0];
    float best_d = Dist(best, t);
    for (size_t e = 1; e < entry_points_.size(); ++e) {
      const float d = Dist(entry_points_[e], t);
      if (Closer(d, entry_points_[e], best_d, best)) {
        best = entry_points_[e];
        best_d = d;
      }
    }
    return best;
  }

  // ---------------------------------------------------------------- 2a. exact kNN
  void BruteForceKnn(int64_t k, std::vector<int32_t>* ids, std::vector<float>* dists) {
    ids->assign(n_ * k, -1);
    dists->assign(n_ * k, kInf);
    parallel_for_(n_, n_ * data_.dim * 2, [&](int64_t begin, int64_t end) {
      std::vector<Neighbour> all;
      all.reserve(n_);
      for (int64_t i = begin; i < end; ++i) {
        all.clear();
        for (int64_t j = 0; j < n_; ++j) {
          if (j != i) all.push_back({Dist(i, j), static_cast<int32_t>(j)});
        }
        std::partial_sort(all.begin(), all.begin() + k, all.end());
        for (int64_t j = 0; j < k; ++j) {
          (*ids)[i * k + j] = all[j].id;
          (*dists)[i * k + j] = all[j].distance;
        }
      }
    });
  }

  // ---------------------------------------------------------------- 2b. NN-descent
  // Dong, Moses & Li (WWW 2011): "a neighbour of a neighbour is likely a neighbour".
  // Each round, every vertex v compares pairs drawn from its recent ("new") and older
  // neighbours, forward and reverse, and proposes each to the other's list. Pairs are
  // local to v's neighbourhood, so their vectors stay in cache.
  //
  // Reproducibility: a list keeps the K smallest (distance, id) pairs of everything ever
  // proposed to it. That is a set function of the proposals, so the order in which
  // threads deliver them does not matter; the per-vertex spinlock only keeps the array
  // consistent. Both orders of a pair give bit-identical distances (see
  // fanng_distance.cc), so a duplicate proposal always lands on the same (distance, id).
  void NnDescent(int64_t k, std::vector<int32_t>* ids_out, std::vector<float>* dists_out) {
    // Per-round sample of new (and old) forward neighbours per vertex; with the reverse
    // samples a vertex joins up to 24 new with 24 old ones, about 850 distances. Smaller
    // samples mean cheaper rounds but more of them; with the random-projection start
    // below, SIFT-like data converges in 6-8 rounds.
    const int64_t sample = std::min<int64_t>(k, 12);
    constexpr int kMaxRounds = 24;
    constexpr int kRpTrees = 6;
    constexpr int64_t kRpLeafMin = 24;
    constexpr int64_t kRpLeafMax = 48;
    // Stop once fewer than this fraction of list entries change in a round.
    constexpr double kConvergedFraction = 0.01;

    std::vector<int32_t>& ids = *ids_out;
    std::vector<float>& dists = *dists_out;
    ids.assign(n_ * k, -1);
    dists.assign(n_ * k, kInf);
    // 0: old (already joined), 1: new, 2: inserted during the current round.
    std::vector<uint8_t> flags(n_ * k, 1);
    std::unique_ptr<std::atomic<float>[]> worst(new std::atomic<float>[n_]);
    std::unique_ptr<std::atomic<bool>[]> locks(new std::atomic<bool>[n_]);
    for (int64_t i = 0; i < n_; ++i) locks[i].store(false, std::memory_order_relaxed);

    // Random initial lists, each from its own seeded stream. Ids are drawn in batches and
    // deduplicated by sorting (the list is sorted by distance afterwards anyway), so a
    // list costs O(k log k) whatever k is.
    parallel_for_(n_, k * data_.dim * 3, [&](int64_t begin, int64_t end) {
      std::vector<Neighbour> init;
      std::vector<int32_t> drawn;
      for (int64_t v = begin; v < end; ++v) {
        Rng rng(opt_.seed ^ Mix(0xA11CE000ULL + static_cast<uint64_t>(v)));
        drawn.clear();
        while (static_cast<int64_t>(drawn.size()) < k) {
          const int64_t missing = k - static_cast<int64_t>(drawn.size());
          for (int64_t i = 0; i < missing; ++i) {
            // Uniform over the n - 1 other vertices.
            const int64_t u = static_cast<int64_t>(rng.Below(n_ - 1));
            drawn.push_back(static_cast<int32_t>(u >= v ? u + 1 : u));
          }
          std::sort(drawn.begin(), drawn.end());
          drawn.erase(std::unique(drawn.begin(), drawn.end()), drawn.end());
        }
        init.clear();
        for (const int32_t u : drawn) init.push_back({0.f, u});
        for (Neighbour& x : init) x.distance = Dist(v, x.id);
        std::sort(init.begin(), init.end());
        for (int64_t j = 0; j < k; ++j) {
          ids[v * k + j] = init[j].id;
          dists[v * k + j] = init[j].distance;
        }
        worst[v].store(init[k - 1].distance, std::memory_order_relaxed);
      }
    });

    std::vector<int32_t> new_fwd(n_ * sample), old_fwd(n_ * sample);
    std::vector<int32_t> new_fwd_count(n_), old_fwd_count(n_);
    std::vector<int64_t> new_rev_offset(n_ + 1), old_rev_offset(n_ + 1);
    std::vector<int32_t> new_rev, old_rev;
    std::vector<int32_t> new_rev_count(n_), old_rev_count(n_);

    auto propose = [&](int32_t u, int32_t w, float d) {
      // worst[u] only decreases, so a proposal beyond it now is beyond the final list too.
      if (d > worst[u].load(std::memory_order_relaxed)) return;
      std::atomic<bool>& lock = locks[u];
      while (lock.exchange(true, std::memory_order_acquire)) {
        while (lock.load(std::memory_order_relaxed)) CpuRelax();
      }
      int32_t* row = ids.data() + static_cast<int64_t>(u) * k;
      float* rd = dists.data() + static_cast<int64_t>(u) * k;
      uint8_t* rf = flags.data() + static_cast<int64_t>(u) * k;
      if (Closer(d, w, rd[k - 1], row[k - 1])) {
        int64_t pos = k - 1;
        while (pos > 0 && Closer(d, w, rd[pos - 1], row[pos - 1])) --pos;
        // A duplicate has the identical (distance, id), so it would sit right before pos.
        const bool duplicate = pos > 0 && row[pos - 1] == w;
        if (!duplicate) {
          for (int64_t j = k - 1; j > pos; --j) {
            row[j] = row[j - 1];
            rd[j] = rd[j - 1];
            rf[j] = rf[j - 1];
          }
          row[pos] = w;
          rd[pos] = d;
          rf[pos] = 2;
          worst[u].store(rd[k - 1], std::memory_order_relaxed);
        }
      }
      lock.store(false, std::memory_order_release);
    };

    // Reverse lists: v goes into rev[u] for each u sampled in v's forward list. Filled
    // sequentially (cheap, O(n * sample)) and, where longer than the sample size, cut
    // down by a hash priority, which depends on the pair only, not on fill order.
    auto build_reverse = [&](const std::vector<int32_t>& fwd, const std::vector<int32_t>& fwd_count,
                             std::vector<int64_t>& offset, std::vector<int32_t>& rev, std::vector<int32_t>& rev_count,
                             uint64_t salt) {
      std::fill(offset.begin(), offset.end(), 0);
      for (int64_t v = 0; v < n_; ++v) {
        for (int32_t j = 0; j < fwd_count[v]; ++j) ++offset[fwd[v * sample + j] + 1];
      }
      for (int64_t u = 0; u < n_; ++u) offset[u + 1] += offset[u];
      rev.resize(offset[n_]);
      std::vector<int64_t> fill(offset.begin(), offset.end() - 1);
      for (int64_t v = 0; v < n_; ++v) {
        for (int32_t j = 0; j < fwd_count[v]; ++j) rev[fill[fwd[v * sample + j]]++] = static_cast<int32_t>(v);
      }
      parallel_for_(n_, 4 * sample, [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) {
          const int64_t len = offset[u + 1] - offset[u];
          int32_t* seg = rev.data() + offset[u];
          if (len > sample) {
            auto priority = [&](int32_t v) {
              return Mix(salt ^ (static_cast<uint64_t>(u) << 32) ^ static_cast<uint64_t>(v));
            };
            std::partial_sort(seg, seg + sample, seg + len, [&](int32_t a, int32_t b) {
              const uint64_t pa = priority(a), pb = priority(b);
              return pa < pb || (pa == pb && a < b);
            });
          }
          rev_count[u] = static_cast<int32_t>(std::min<int64_t>(len, sample));
        }
      });
    };

    // Random-projection trees give NN-descent a head start: points that share a leaf are
    // near each other, so joining every leaf's pairs fills the lists with good neighbours
    // for a small fraction of a round's cost, and the rounds then converge in a few steps.
    {
      const int64_t leaf_size = std::max<int64_t>(kRpLeafMin, std::min<int64_t>(k, kRpLeafMax));
      std::vector<std::vector<int32_t>> tree_order(kRpTrees);
      std::vector<std::vector<int64_t>> tree_leaves(kRpTrees);  // leaf boundaries into tree_order
      parallel_for_(kRpTrees, n_ * data_.dim * 40, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          RpTree(static_cast<int>(t), leaf_size, &tree_order[t], &tree_leaves[t]);
        }
      });
      // All leaves of all trees, as (tree, leaf index) pairs, joined in parallel.
      std::vector<std::pair<int32_t, int64_t>> leaves;
      for (int t = 0; t < kRpTrees; ++t) {
        for (int64_t l = 0; l + 1 < static_cast<int64_t>(tree_leaves[t].size()); ++l) leaves.push_back({t, l});
      }
      parallel_for_(static_cast<int64_t>(leaves.size()), leaf_size * leaf_size * data_.dim,
                    [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const auto& order = tree_order[leaves[i].first];
          const auto& bounds = tree_leaves[leaves[i].first];
          const int64_t lo = bounds[leaves[i].second], hi = bounds[leaves[i].second + 1];
          for (int64_t a = lo; a < hi; ++a) {
            for (int64_t b = a + 1; b < hi; ++b) {
              const float d = Dist(order[a], order[b]);
              propose(order[a], order[b], d);
              propose(order[b], order[a], d);
            }
          }
        }
      });
      parallel_for_(n_, k, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin * k; i < end * k; ++i) flags[i] = 1;
      });
    }

    for (int round = 0; round < kMaxRounds; ++round) {
      // Sample: the nearest `sample` new entries (then marked old, as they are about to
      // be joined) and the nearest `sample` old entries.
      parallel_for_(n_, 2 * k, [&](int64_t begin, int64_t end) {
        for (int64_t v = begin; v < end; ++v) {
          int32_t nn = 0, no = 0;
          for (int64_t j = 0; j < k; ++j) {
            uint8_t& f = flags[v * k + j];
            if (f != 0 && nn < sample) {
              new_fwd[v * sample + nn++] = ids[v * k + j];
              f = 0;
            } else if (f == 0 && no < sample) {
              old_fwd[v * sample + no++] = ids[v * k + j];
            }
          }
          new_fwd_count[v] = nn;
          old_fwd_count[v] = no;
        }
      });
      const uint64_t round_salt = Mix(opt_.seed ^ (0xB0B0000ULL + static_cast<uint64_t>(round)));
      build_reverse(new_fwd, new_fwd_count, new_rev_offset, new_rev, new_rev_count, round_salt);
      build_reverse(old_fwd, old_fwd_count, old_rev_offset, old_rev, old_rev_count, Mix(round_salt));

      // Local join.
      parallel_for_(n_, 40 * sample * sample * data_.dim, [&](int64_t begin, int64_t end) {
        std::vector<int32_t> fresh, stale;
        for (int64_t v = begin; v < end; ++v) {
          fresh.assign(new_fwd.begin() + v * sample, new_fwd.begin() + v * sample + new_fwd_count[v]);
          fresh.insert(fresh.end(), new_rev.begin() + new_rev_offset[v],
                       new_rev.begin() + new_rev_offset[v] + new_rev_count[v]);
          std::sort(fresh.begin(), fresh.end());
          fresh.erase(std::unique(fresh.begin(), fresh.end()), fresh.end());
          stale.assign(old_fwd.begin() + v * sample, old_fwd.begin() + v * sample + old_fwd_count[v]);
          stale.insert(stale.end(), old_rev.begin() + old_rev_offset[v],
                       old_rev.begin() + old_rev_offset[v] + old_rev_count[v]);
          std::sort(stale.begin(), stale.end());
          stale.erase(std::unique(stale.begin(), stale.end()), stale.end());
          for (size_t a = 0; a < fresh.size(); ++a) {
            const int32_t x = fresh[a];
            for (size_t b = a + 1; b < fresh.size(); ++b) {
              const int32_t y = fresh[b];
              const float d = Dist(x, y);
              propose(x, y, d);
              propose(y, x, d);
            }
            for (const int32_t y : stale) {
              if (y == x || std::binary_search(fresh.begin(), fresh.end(), y)) continue;
              const float d = Dist(x, y);
              propose(x, y, d);
              propose(y, x, d);
            }
          }
        }
      });

      // Count (and promote to "new") this round's insertions; an integer sum, so the
      // total does not depend on how the range was split.
      std::atomic<int64_t> changed(0);
      parallel_for_(n_, k, [&](int64_t begin, int64_t end) {
        int64_t local = 0;
        for (int64_t i = begin * k; i < end * k; ++i) {
          if (flags[i] == 2) {
            flags[i] = 1;
            ++local;
          }
        }
        changed.fetch_add(local, std::memory_order_relaxed);
      });
      if (static_cast<double>(changed.load()) <= kConvergedFraction * static_cast<double>(n_ * k)) break;
    }
  }

  // One random-projection tree: each node splits its points by the hyperplane halfway
  // between two of them picked at random, until nodes hold at most leaf_size points.
  // Writes the points in leaf order and the leaf boundaries. Sequential and seeded per
  // tree, so the trees do not depend on the thread count.
  void RpTree(int tree, int64_t leaf_size, std::vector<int32_t>* order_out, std::vector<int64_t>* leaves_out) const {
    const int64_t dim = data_.dim;
    std::vector<int32_t>& order = *order_out;
    std::vector<int64_t>& leaves = *leaves_out;
    order.resize(n_);
    std::iota(order.begin(), order.end(), 0);
    leaves.clear();
    Rng rng(opt_.seed ^ Mix(0x7EEE0000ULL + static_cast<uint64_t>(tree)));
    const DistanceFn neg_dot = GetDistanceFn(Metric::kInnerProduct);
    std::vector<float> normal(dim);
    std::vector<float> side;
    std::vector<int32_t> scratch;
    std::vector<float> row_a(dim), row_b(dim), row_x(dim);
    // Depth-first over [begin, end) ranges; the stack holds ranges still to split, pushed
    // right then left so leaves come out left to right.
    std::vector<std::pair<int64_t, int64_t>> stack{{0, n_}};
    while (!stack.empty()) {
      const auto [begin, end] = stack.back();
      stack.pop_back();
      const int64_t size = end - begin;
      if (size <= leaf_size) {
        leaves.push_back(begin);
        continue;
      }
      const int32_t a = order[begin + static_cast<int64_t>(rng.Below(size))];
      const int32_t b = order[begin + static_cast<int64_t>(rng.Below(size))];
      const float* xa = RowAsFloat(a, row_a.data());
      const float* xb = RowAsFloat(b, row_b.data());
      double offset = 0.0;
      for (int64_t j = 0; j < dim; ++j) {
        normal[j] = xa[j] - xb[j];
        offset += 0.5 * static_cast<double>(normal[j]) * (static_cast<double>(xa[j]) + xb[j]);
      }
      side.resize(size);
      for (int64_t i = 0; i < size; ++i) {
        const float* x = RowAsFloat(order[begin + i], row_x.data());
        side[i] = -neg_dot(normal.data(), x, dim) - static_cast<float>(offset);
      }
      // Stable partition: points on the positive side first.
      scratch.clear();
      int64_t left = 0;
      for (int64_t i = 0; i < size; ++i) {
        if (side[i] > 0.f) order[begin + left++] = order[begin + i];
        else scratch.push_back(order[begin + i]);
      }
      std::copy(scratch.begin(), scratch.end(), order.begin() + begin + left);
      // Degenerate split (duplicates, or a == b): cut the range in half instead.
      if (left == 0 || left == size) left = size / 2;
      stack.push_back({begin + left, end});
      stack.push_back({begin, begin + left});
    }
    leaves.push_back(n_);
    std::sort(leaves.begin(), leaves.end());
  }

  // ---------------------------------------------------------------- 3. occlusion pruning
  // Candidates of v: its kNN list plus the vertices that have v in theirs (reverse edges,
  // the nearest reverse_cap of them), which gives vertices in sparse regions edges towards
  // the dense regions that list them. Scanned by increasing distance, a candidate r is dropped
  // when a kept q "occludes" it: d(v,q) < d(v,r) and d(q,r) < d(v,r) (with the slack, see
  // Occludes) -- q is closer to r than v is, so a search standing at v reaches r through q
  // anyway. This is the relative neighbourhood rule; it spends the degree budget on
  // distinct directions.
  void PruneCandidates(int64_t k, int64_t reverse_cap, const std::vector<int32_t>& knn_ids,
                       const std::vector<float>& knn_dist) {
    std::vector<int64_t> offset(n_ + 1, 0);
    for (int64_t i = 0; i < n_ * k; ++i) ++offset[knn_ids[i] + 1];
    for (int64_t u = 0; u < n_; ++u) offset[u + 1] += offset[u];
    std::vector<Neighbour> rev(offset[n_]);
    {
      std::vector<int64_t> fill(offset.begin(), offset.end() - 1);
      for (int64_t v = 0; v < n_; ++v) {
        for (int64_t j = 0; j < k; ++j) {
          rev[fill[knn_ids[v * k + j]]++] = {knn_dist[v * k + j], static_cast<int32_t>(v)};
        }
      }
    }
    parallel_for_(n_, 4 * k * m_ * data_.dim, [&](int64_t begin, int64_t end) {
      std::vector<Neighbour> pool;
      std::vector<Neighbour> kept;
      for (int64_t v = begin; v < end; ++v) {
        pool.clear();
        for (int64_t j = 0; j < k; ++j) pool.push_back({knn_dist[v * k + j], knn_ids[v * k + j]});
        Neighbour* rb = rev.data() + offset[v];
        Neighbour* re = rev.data() + offset[v + 1];
        if (re - rb > reverse_cap) {
          std::partial_sort(rb, rb + reverse_cap, re);
          re = rb + reverse_cap;
        }
        pool.insert(pool.end(), rb, re);
        std::sort(pool.begin(), pool.end());
        SelectEdges(pool, &kept);
        SetRow(v, kept);
      }
    });
  }

  // The edges of a vertex from its candidates, sorted by (distance, id) with repeats
  // adjacent: nearest first, each kept unless an already kept edge occludes it, until
  // max_degree are kept.
  void SelectEdges(const std::vector<Neighbour>& pool, std::vector<Neighbour>* kept) const {
    kept->clear();
    for (size_t c = 0; c < pool.size() && static_cast<int64_t>(kept->size()) < m_; ++c) {
      const Neighbour r = pool[c];
      if (c > 0 && pool[c - 1].id == r.id) continue;  // the same candidate twice
      bool occluded = false;
      for (const Neighbour& q : *kept) {
        if (Occludes(q.distance, r.distance, [&] { return Dist(q.id, r.id); }, slack_)) {
          occluded = true;
          break;
        }
      }
      if (!occluded) kept->push_back(r);
    }
  }

  // Replaces v's row with `edges` (at most max_degree, shortest first).
  void SetRow(int64_t v, const std::vector<Neighbour>& edges) {
    const int64_t base = v * m_;
    for (size_t j = 0; j < edges.size(); ++j) {
      graph_[base + j] = edges[j].id;
      lengths_[base + j] = edges[j].distance;
    }
    for (int64_t j = static_cast<int64_t>(edges.size()); j < m_; ++j) {
      graph_[base + j] = -1;
      lengths_[base + j] = kInf;
    }
    degree_[v] = static_cast<int32_t>(edges.size());
    if (!lengths_known_.empty()) lengths_known_[v] = 1;
  }

  // Edge lengths of v's row, for a graph that came in without them (insertion).
  void EnsureLengths(int32_t v) {
    if (lengths_known_.empty() || lengths_known_[v]) return;
    const int64_t base = static_cast<int64_t>(v) * m_;
    for (int32_t j = 0; j < degree_[v]; ++j) lengths_[base + j] = Dist(v, graph_[base + j]);
    lengths_known_[v] = 1;
  }

  // ---------------------------------------------------------------- 4. traverse-add
  // Greedy walk from `start` towards vertex t: move to the neighbour closest to t while
  // that strictly improves. Returns the vertex where the walk stops, or -1 when it reaches t.
  //
  // Walks on a sensible graph take tens of steps; the cap only bounds degenerate ones
  // (max_degree 1 or 2 can make long chains). A capped walk reports where it stopped,
  // which AddEdge treats like any other stop (it re-checks occlusion).
  int32_t GreedyStuck(int32_t t, int32_t start, int max_steps = 1024) const {
    int32_t current = start;
    float current_d = Dist(current, t);
    for (int step = 0; current != t; ++step) {
      if (step == max_steps) return current;
      int32_t best = current;
      float best_d = current_d;
      const int32_t* row = graph_.data() + static_cast<int64_t>(current) * m_;
      for (int32_t j = 0; j < degree_[current]; ++j) {
        const int32_t q = row[j];
        if (q == t) return -1;
        const float d = Dist(q, t);
        if (d < best_d) {
          best_d = d;
          best = q;
        }
      }
      if (best == current) return current;
      current = best;
      current_d = best_d;
    }
    return -1;
  }

  // Adds the edge s->t found by a stuck greedy walk. Because the walk stopped at s, no
  // neighbour q of s is closer to t than s is, so s->t cannot be occluded (checked again
  // anyway: other edges added in the same batch may have changed s's row). Edges of s that
  // s->t occludes are removed, which keeps the whole graph satisfying the occlusion rule.
  // If the row is still over-full, its longest other edge goes.
  //
  // With `protect` (reachability step) the flagged edges are never removed, and s->t is
  // added even when occluded; returns false only when no slot can be freed.
  bool AddEdge(int32_t s, int32_t t, std::vector<uint8_t>* protect) {
    const int64_t base = static_cast<int64_t>(s) * m_;
    const int32_t deg = degree_[s];
    for (int32_t j = 0; j < deg; ++j) {
      if (graph_[base + j] == t) return false;
    }
    EnsureLengths(s);
    const float d_st = Dist(s, t);
    struct Edge {
      float length;
      int32_t id;
      uint8_t protect;
    };
    Edge row[kMaxBuildDegree + 1];  // the op caps max_degree
    int32_t size = 0;
    bool inserted = false;
    for (int32_t j = 0; j < deg; ++j) {
      const int32_t r = graph_[base + j];
      const float len = lengths_[base + j];
      const uint8_t prot = protect ? (*protect)[base + j] : 0;
      const float d_tr = Dist(t, r);
      if (!protect && Occludes(len, d_st, [&] { return d_tr; }, slack_)) return false;  // s->r occludes s->t
      const bool occluded_by_t = Occludes(d_st, len, [&] { return d_tr; }, slack_);
      if (occluded_by_t && !prot) continue;
      if (!inserted && Closer(d_st, t, len, r)) {
        row[size++] = {d_st, t, static_cast<uint8_t>(protect ? 1 : 0)};
        inserted = true;
      }
      row[size++] = {len, r, prot};
    }
    if (!inserted) row[size++] = {d_st, t, static_cast<uint8_t>(protect ? 1 : 0)};
    if (size > m_) {
      // Drop the longest edge that is neither t nor protected.
      int32_t drop = -1;
      for (int32_t j = size - 1; j >= 0; --j) {
        if (row[j].id != t && !row[j].protect) {
          drop = j;
          break;
        }
      }
      if (drop < 0) return false;
      for (int32_t j = drop; j + 1 < size; ++j) row[j] = row[j + 1];
      --size;
    }
    for (int32_t j = 0; j < size; ++j) {
      graph_[base + j] = row[j].id;
      lengths_[base + j] = row[j].length;
      if (protect) (*protect)[base + j] = row[j].protect;
    }
    for (int32_t j = size; j < m_; ++j) {
      graph_[base + j] = -1;
      lengths_[base + j] = kInf;
      if (protect) (*protect)[base + j] = 0;
    }
    degree_[s] = size;
    return true;
  }

  // The two traverse-add walks towards t: from the entry point nearest to t, then from
  // `random_start`. Writes where each got stuck (-1: it reached t) to stuck[0..1] and
  // returns the entry point used.
  int32_t TraverseWalks(int32_t t, int32_t random_start, int32_t* stuck) const {
    const int32_t nearest = NearestEntryPoint(t);
    stuck[0] = GreedyStuck(t, nearest);
    stuck[1] = GreedyStuck(t, random_start);
    return nearest;
  }

  // One FANNG traverse-add pass: every vertex, in a seeded random order, is the target
  // of two greedy walks, one from the entry point nearest to it (where a search for it
  // starts; the entry itself when there is one entry point) and one from a random vertex
  // (the paper's random pairs); a failed walk adds an edge from where it stopped.
  // This carries queries across regions the local kNN candidates never linked. Walks from
  // the entry alone leave clustered data nearly a tree of clusters (a few hub clusters
  // hold all the links between clusters), so queries near a cluster reached through an
  // unlikely path fail; the random starts link every cluster to most others: in a
  // 20-cluster test, recall@10 at ef 100 went from 0.89 to 1.0, with SIFT unchanged.
  // The walks of a fixed-size batch run in parallel on the frozen graph; the edges are
  // then added one by one in batch order, so the result does not depend on threads.
  void Refine(int pass) {
    constexpr int64_t kBatch = 1024;
    std::vector<int32_t> order(n_);
    std::iota(order.begin(), order.end(), 0);
    Rng rng(opt_.seed ^ Mix(0x5EF1E000ULL + static_cast<uint64_t>(pass)));
    for (int64_t i = n_ - 1; i > 0; --i) std::swap(order[i], order[rng.Below(i + 1)]);
    std::vector<int32_t> stuck(2 * kBatch);
    const uint64_t stream = opt_.seed ^ Mix(0x57A27000ULL + static_cast<uint64_t>(pass));
    for (int64_t start = 0; start < n_; start += kBatch) {
      const int64_t count = std::min(kBatch, n_ - start);
      parallel_for_(count, 60 * m_ * data_.dim, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int32_t t = order[start + i];
          const int32_t from = static_cast<int32_t>(Mix(stream ^ static_cast<uint64_t>(t)) % static_cast<uint64_t>(n_));
          TraverseWalks(t, from, &stuck[2 * i]);
        }
      });
      for (int64_t i = 0; i < count; ++i) {
        if (stuck[2 * i] >= 0) AddEdge(stuck[2 * i], order[start + i], nullptr);
        if (stuck[2 * i + 1] >= 0) AddEdge(stuck[2 * i + 1], order[start + i], nullptr);
      }
    }
  }

  // ---------------------------------------------------------------- 5. reachability
  // A breadth-first tree from the entry marks the edges that keep reached vertices
  // reachable ("protected"). Each unreached vertex t gets an edge from the vertex where a
  // greedy walk towards t stops (a reached vertex, and an edge no existing edge occludes);
  // only unprotected edges are ever evicted for it, so nothing reached becomes unreachable,
  // and t's own subtree then joins the tree. A slot can always be found somewhere: with
  // r reached vertices there are r - 1 tree edges but r * max_degree slots.
  void Connect() {
    std::vector<uint8_t> reached(n_, 0), protect(n_ * m_, 0);
    std::vector<int32_t> queue;
    queue.reserve(n_);
    auto grow = [&](int32_t root) {
      size_t head = queue.size();
      queue.push_back(root);
      reached[root] = 1;
      while (head < queue.size()) {
        const int32_t v = queue[head++];
        const int64_t base = static_cast<int64_t>(v) * m_;
        for (int32_t j = 0; j < degree_[v]; ++j) {
          const int32_t u = graph_[base + j];
          if (!reached[u]) {
            reached[u] = 1;
            protect[base + j] = 1;
            queue.push_back(u);
          }
        }
      }
    };
    grow(entry_);
    auto has_slack = [&](int32_t v) {
      if (degree_[v] < m_) return true;
      for (int32_t j = 0; j < degree_[v]; ++j) {
        if (!protect[static_cast<int64_t>(v) * m_ + j]) return true;
      }
      return false;
    };
    // Fallback search for a reached vertex with a free or unprotected slot. First a short
    // depth-first walk from s: following edges downwards usually meets a tree leaf, whose
    // edges are all unprotected. Failing that (deep trees when max_degree is tiny), the
    // oldest reached vertex that still has room; a vertex whose slots are all tree edges
    // never regains one (tree edges are never removed), so the scan for it only moves on.
    constexpr size_t kLocalSearch = 512;
    std::vector<uint32_t> seen(n_, 0);
    uint32_t epoch = 0;
    std::vector<int32_t> stack;
    std::vector<int32_t> slack(queue.begin(), queue.end());
    size_t slack_head = 0;
    auto find_slack = [&](int32_t start) {
      ++epoch;
      stack.assign(1, start);
      seen[start] = epoch;
      for (size_t visited = 0; !stack.empty() && visited < kLocalSearch; ++visited) {
        const int32_t v = stack.back();
        stack.pop_back();
        if (has_slack(v)) return v;
        for (int32_t j = degree_[v] - 1; j >= 0; --j) {
          const int32_t u = graph_[static_cast<int64_t>(v) * m_ + j];
          if (seen[u] != epoch) {
            seen[u] = epoch;
            stack.push_back(u);
          }
        }
      }
      while (slack_head < slack.size() && !has_slack(slack[slack_head])) ++slack_head;
      return slack_head < slack.size() ? slack[slack_head] : static_cast<int32_t>(-1);
    };
    for (int64_t t = 0; t < n_ && static_cast<int64_t>(queue.size()) < n_; ++t) {
      if (reached[t]) continue;
      const int32_t target = static_cast<int32_t>(t);
      // A shorter walk than in refinement: here any reached vertex will do, and the
      // graphs that leave many vertices unreached (tiny max_degree) make long walks.
      const int32_t s = GreedyStuck(target, entry_, 64);
      if (s < 0 || !AddEdge(s, target, &protect)) {
        // Every edge of s is a tree edge (rare unless max_degree is tiny). With r reached
        // vertices there are r - 1 tree edges but r * max_degree slots, so some reached
        // vertex has room.
        const int32_t other = find_slack(s < 0 ? entry_ : s);
        if (other < 0 || !AddEdge(other, target, &protect)) continue;  // impossible by the count above
      }
      // AddEdge flagged s->t as protected: it is t's tree edge. Grow the tree from t.
      const size_t before = queue.size();
      grow(target);
      slack.insert(slack.end(), queue.begin() + before, queue.end());
    }
  }

  const Dataset& data_;
  const BuildOptions& opt_;
  const ParallelFor& parallel_for_;
  const int64_t n_;
  const int64_t m_;
  const float slack_;  // of the occlusion rule (see Occludes)
  int32_t entry_ = 0;
  std::vector<int32_t> entry_points_{0};  // entry_ first
  std::vector<int32_t> graph_;   // [n, m] neighbour ids, -1 padded, shortest first
  std::vector<float> lengths_;   // [n, m] matching edge lengths
  std::vector<int32_t> degree_;  // real entries per row
  std::vector<uint8_t> lengths_known_;  // insertion only: rows whose lengths_ are filled in
};

}  // namespace

void BuildGraph(const Dataset& data, const BuildOptions& options, const ParallelFor& parallel_for,
                int32_t* neighbours_out, int32_t* entry_points_out) {
  Builder(data, options, parallel_for).Run(neighbours_out, entry_points_out);
}

void InsertVertices(const Dataset& data, int max_degree, const InsertOptions& options, const int32_t* entry_points,
                    int64_t entry_count, int64_t start, const ParallelFor& parallel_for, int32_t* neighbours) {
  BuildOptions build;
  build.max_degree = max_degree;
  build.metric = data.metric;
  Builder(data, build, parallel_for).Insert(neighbours, entry_points, entry_count, start, options);
}

}  // namespace fanng
}  // namespace hybrid_keras
