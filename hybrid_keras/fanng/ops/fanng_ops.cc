// TensorFlow registration of the FANNG ops.
//
// The index is plain data (vectors + a neighbour table + an entry vertex) and both ops
// are stateless CPU kernels over it, so an index lives in a SavedModel as ordinary
// variables. The ops sit under the "HybridKeras>" namespace; saving a model that uses
// them needs tf.saved_model.SaveOptions(namespace_whitelist=["HybridKeras"]).
//
// Every input is validated here with OP_REQUIRES, before any pointer reaches the
// algorithm in fanng_core.h: a bad tensor is an InvalidArgument error, never a crash.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <new>
#include <string>

#include "fanng_core.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"

namespace hybrid_keras {
namespace fanng {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Row ids are int32 and -1 is the padding value.
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max() - 1;
// Rows are edited in fixed stack buffers during the build (fanng_build.cc).
constexpr int64_t kMaxDegree = 1024;
// The search keeps each vertex's edge cursor in 16 bits (fanng_search.cc).
constexpr int64_t kMaxSearchDegree = 65535;
// Candidate lists cost n * candidates entries of memory during the build.
constexpr int64_t kMaxCandidates = 4096;

absl::Status ParseMetric(const std::string& name, Metric* metric) {
  if (name == "l2") {
    *metric = Metric::kL2;
  } else if (name == "ip") {
    *metric = Metric::kInnerProduct;
  } else {
    return InvalidArgument("metric must be 'l2' (squared Euclidean) or 'ip' (negative inner product), got '", name,
                           "'");
  }
  return absl::OkStatus();
}

ParallelFor MakeParallelFor(OpKernelContext* ctx) {
  tensorflow::thread::ThreadPool* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return [pool](int64_t total, int64_t cost_per_unit, const std::function<void(int64_t, int64_t)>& fn) {
    if (total <= 0) return;
    pool->ParallelFor(total, cost_per_unit, fn);
  };
}

// Checks a float matrix for NaN/inf, split over the thread pool (a large index is
// validated on every search call, so this should not be the slow part).
bool ParallelAllFinite(const ParallelFor& parallel_for, const float* values, int64_t count) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  std::atomic<bool> ok(true);
  parallel_for(chunks, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end && ok.load(std::memory_order_relaxed); ++c) {
      const int64_t start = c * kChunk;
      if (!AllFinite(values + start, std::min(kChunk, count - start))) ok.store(false, std::memory_order_relaxed);
    }
  });
  return ok.load();
}

absl::Status ValidateVectors(const Tensor& vectors) {
  if (vectors.dims() != 2) {
    return InvalidArgument("vectors must be a float32 matrix [rows, dim], got shape ", vectors.shape().DebugString());
  }
  if (vectors.dim_size(1) < 1) {
    return InvalidArgument("vectors must have at least one column, got shape ", vectors.shape().DebugString());
  }
  const int64_t n = vectors.dim_size(0);
  if (n < 1) return InvalidArgument("vectors must have at least one row");
  if (n > kMaxRows) return InvalidArgument("vectors has ", n, " rows; at most ", kMaxRows, " are supported");
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------ build

REGISTER_OP("HybridKeras>FanngBuild")
    .Input("vectors: float32")
    .Output("neighbours: int32")
    .Output("entry: int32")
    .Attr("max_degree: int >= 1 = 32")
    .Attr("metric: {'l2', 'ip'} = 'l2'")
    .Attr("seed: int = 0")
    .Attr("candidates: int >= 0 = 0")
    .Attr("refine_iterations: int >= 0 = 1")
    .Attr("connect: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle vectors;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &vectors));
      int64_t max_degree;
      TF_RETURN_IF_ERROR(c->GetAttr("max_degree", &max_degree));
      c->set_output(0, c->Matrix(c->Dim(vectors, 0), max_degree));
      c->set_output(1, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Builds a FANNG nearest-neighbour graph over the rows of `vectors`.

neighbours: [N, max_degree] out-edges of every vertex, shortest first, -1 padded.
entry: the vertex nearest to the mean of the vectors; searches start there.
max_degree: most out-edges per vertex (at most 1024).
metric: 'l2' (squared Euclidean distance) or 'ip' (negative inner product).
seed: makes the build reproducible; the result does not depend on the thread count.
candidates: length of each vertex's candidate list before occlusion pruning: its
  ceil(candidates / 2) (approximate) nearest neighbours plus up to as many reverse
  neighbours (0: max(2 * max_degree, 32); at most 4096).
refine_iterations: traverse-add passes (each walks from the entry to every vertex).
connect: add edges so that every vertex is reachable from `entry`.
)doc");

class FanngBuildOp : public OpKernel {
 public:
  explicit FanngBuildOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t max_degree, candidates, refine_iterations, seed;
    std::string metric;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_degree", &max_degree));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("metric", &metric));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("seed", &seed));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("candidates", &candidates));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("refine_iterations", &refine_iterations));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("connect", &options_.connect));
    OP_REQUIRES_OK(ctx, ParseMetric(metric, &options_.metric));
    OP_REQUIRES(ctx, max_degree >= 1 && max_degree <= kMaxDegree,
                InvalidArgument("max_degree must be in [1, ", kMaxDegree, "], got ", max_degree));
    OP_REQUIRES(ctx, candidates >= 0 && candidates <= kMaxCandidates,
                InvalidArgument("candidates must be in [0, ", kMaxCandidates, "] (0 = automatic), got ", candidates));
    OP_REQUIRES(ctx, refine_iterations >= 0 && refine_iterations <= 1000,
                InvalidArgument("refine_iterations must be in [0, 1000], got ", refine_iterations));
    options_.max_degree = static_cast<int>(max_degree);
    options_.candidates = static_cast<int>(candidates);
    options_.refine_iterations = static_cast<int>(refine_iterations);
    options_.seed = static_cast<uint64_t>(seed);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& vectors = ctx->input(0);
    OP_REQUIRES_OK(ctx, ValidateVectors(vectors));
    const int64_t n = vectors.dim_size(0);
    const int64_t dim = vectors.dim_size(1);
    const ParallelFor parallel_for = MakeParallelFor(ctx);
    const float* data = vectors.flat<float>().data();
    OP_REQUIRES(ctx, ParallelAllFinite(parallel_for, data, n * dim),
                InvalidArgument("vectors contains NaN or infinite values"));

    Tensor* neighbours = nullptr;
    Tensor* entry = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, options_.max_degree}), &neighbours));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &entry));
    const Dataset dataset{data, n, dim, GetDistanceFn(options_.metric)};
    // The build allocates O(n * candidates) working memory; running out must surface as
    // an error, not terminate the process.
    try {
      BuildGraph(dataset, options_, parallel_for, neighbours->flat<int32_t>().data(), entry->flat<int32_t>().data());
    } catch (const std::bad_alloc&) {
      ctx->SetStatus(tensorflow::errors::ResourceExhausted("out of memory building a FANNG graph over ", n,
                                                           " vectors with candidates=", options_.candidates));
    }
  }

 private:
  BuildOptions options_;
};

REGISTER_KERNEL_BUILDER(Name("HybridKeras>FanngBuild").Device(DEVICE_CPU), FanngBuildOp);

// ------------------------------------------------------------------------------ search

REGISTER_OP("HybridKeras>FanngSearch")
    .Input("vectors: float32")
    .Input("neighbours: int32")
    .Input("entry: int32")
    .Input("queries: float32")
    .Input("k: int32")
    .Input("budget: int32")
    .Input("ef: int32")
    .Output("ids: int32")
    .Output("distances: float32")
    .Attr("metric: {'l2', 'ip'} = 'l2'")
    .Attr("check_vectors: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle vectors, neighbours, queries, scalar;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &vectors));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &neighbours));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &scalar));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &queries));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 0, &scalar));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 0, &scalar));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(6), 0, &scalar));
      DimensionHandle merged;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(vectors, 0), c->Dim(neighbours, 0), &merged));
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(vectors, 1), c->Dim(queries, 1), &merged));
      DimensionHandle k;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(4, &k));
      c->set_output(0, c->Matrix(c->Dim(queries, 0), k));
      c->set_output(1, c->Matrix(c->Dim(queries, 0), k));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Finds the k nearest rows of `vectors` for every row of `queries` with FANNG's
backtracking search over the graph made by FanngBuild.

neighbours: [N, M] out-edges, shortest first; a row is read up to its first -1
  (M <= 65535).
entry: the vertex every search starts from.
k: results per query, 1 <= k <= N.
budget: most distance computations per query (>= 1); with ef = 0 a budget >= N
  searches everything reachable from `entry`.
ef: 0 for the paper's rule (stop only at the budget), or the size of a pool of best
  vertices (hnswlib's ef, raised to k if smaller): the search also stops once no vertex
  with unexplored edges is closer than the pool's worst, so easy queries end early.
ids: [Q, k] row indices into `vectors`, nearest first, -1 where fewer were found.
distances: [Q, k] matching distances under `metric`, +inf padding.
check_vectors: scan all of `vectors` for NaN/inf on every call. The scan reads the whole
  index (about 10 ms per 100 MB), which dominates small calls; an index whose vectors were
  checked when it was built (FanngBuild rejects non-finite vectors) can skip it. Shapes,
  ids, entry, k, budget and queries are always checked, and skipping the scan cannot
  make the kernel read out of bounds (a NaN distance is treated as infinitely far).
)doc");

class FanngSearchOp : public OpKernel {
 public:
  explicit FanngSearchOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string metric;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("metric", &metric));
    OP_REQUIRES_OK(ctx, ParseMetric(metric, &metric_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("check_vectors", &check_vectors_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& vectors = ctx->input(0);
    const Tensor& neighbours = ctx->input(1);
    const Tensor& entry_t = ctx->input(2);
    const Tensor& queries = ctx->input(3);
    const Tensor& k_t = ctx->input(4);
    const Tensor& budget_t = ctx->input(5);
    const Tensor& ef_t = ctx->input(6);

    OP_REQUIRES_OK(ctx, ValidateVectors(vectors));
    const int64_t n = vectors.dim_size(0);
    const int64_t dim = vectors.dim_size(1);
    OP_REQUIRES(ctx, neighbours.dims() == 2,
                InvalidArgument("neighbours must be an int32 matrix [N, M], got shape ",
                                neighbours.shape().DebugString()));
    OP_REQUIRES(ctx, neighbours.dim_size(0) == n,
                InvalidArgument("neighbours must have one row per vector (", n, "), got shape ",
                                neighbours.shape().DebugString()));
    OP_REQUIRES(ctx, queries.dims() == 2,
                InvalidArgument("queries must be a float32 matrix [Q, dim], got shape ", queries.shape().DebugString()));
    OP_REQUIRES(ctx, queries.dim_size(1) == dim,
                InvalidArgument("queries must have ", dim, " columns like vectors, got shape ",
                                queries.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(entry_t.shape()),
                InvalidArgument("entry must be an int32 scalar, got shape ", entry_t.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(k_t.shape()),
                InvalidArgument("k must be an int32 scalar, got shape ", k_t.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(budget_t.shape()),
                InvalidArgument("budget must be an int32 scalar, got shape ", budget_t.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(ef_t.shape()),
                InvalidArgument("ef must be an int32 scalar, got shape ", ef_t.shape().DebugString()));
    const int32_t entry = entry_t.scalar<int32_t>()();
    const int32_t k = k_t.scalar<int32_t>()();
    const int32_t budget = budget_t.scalar<int32_t>()();
    const int32_t ef = ef_t.scalar<int32_t>()();
    OP_REQUIRES(ctx, entry >= 0 && entry < n, InvalidArgument("entry must be in [0, ", n, "), got ", entry));
    OP_REQUIRES(ctx, k >= 1 && k <= n, InvalidArgument("k must be in [1, ", n, "] (the number of vectors), got ", k));
    OP_REQUIRES(ctx, budget >= 1, InvalidArgument("budget must be >= 1, got ", budget));
    OP_REQUIRES(ctx, ef >= 0, InvalidArgument("ef must be >= 0 (0: stop at the budget only), got ", ef));

    const int64_t m = neighbours.dim_size(1);
    OP_REQUIRES(ctx, m <= kMaxSearchDegree,
                InvalidArgument("neighbours may have at most ", kMaxSearchDegree, " columns, got ", m));
    const int32_t* graph = neighbours.flat<int32_t>().data();
    const ParallelFor parallel_for = MakeParallelFor(ctx);
    {
      // Every id is read as an array index by the search, so every one is checked.
      constexpr int64_t kChunk = 1 << 16;
      const int64_t count = n * m;
      std::atomic<bool> ok(true);
      parallel_for((count + kChunk - 1) / kChunk, kChunk, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end && ok.load(std::memory_order_relaxed); ++c) {
          const int64_t start = c * kChunk;
          if (!IdsInRange(graph + start, std::min(kChunk, count - start), static_cast<int32_t>(n))) {
            ok.store(false, std::memory_order_relaxed);
          }
        }
      });
      OP_REQUIRES(ctx, ok.load(), InvalidArgument("neighbours ids must be in [-1, ", n, ")"));
    }
    const float* data = vectors.flat<float>().data();
    const float* query_data = queries.flat<float>().data();
    const int64_t q = queries.dim_size(0);
    OP_REQUIRES(ctx, !check_vectors_ || ParallelAllFinite(parallel_for, data, n * dim),
                InvalidArgument("vectors contains NaN or infinite values"));
    OP_REQUIRES(ctx, ParallelAllFinite(parallel_for, query_data, q * dim),
                InvalidArgument("queries contains NaN or infinite values"));

    Tensor* ids = nullptr;
    Tensor* distances = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({q, k}), &ids));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({q, k}), &distances));
    if (q == 0) return;

    const Dataset dataset{data, n, dim, GetDistanceFn(metric_)};
    int32_t* ids_out = ids->flat<int32_t>().data();
    float* dist_out = distances->flat<float>().data();
    const int64_t effective_budget = std::min<int64_t>(budget, n);
    // Scratch buffers grow to O(n + budget) per thread; an allocation failure is reported,
    // never allowed to escape the kernel.
    std::atomic<bool> out_of_memory(false);
    auto search_range = [&](int64_t begin, int64_t end) {
      try {
        SearchScratch& scratch = ThreadLocalSearchScratch();
        for (int64_t i = begin; i < end; ++i) {
          SearchOne(dataset, graph, m, entry, query_data + i * dim, k, effective_budget, std::min<int64_t>(ef, n),
                    scratch, ids_out + i * k, dist_out + i * k);
        }
      } catch (const std::bad_alloc&) {
        out_of_memory.store(true);
      }
    };
    if (q == 1) {
      search_range(0, 1);
    } else {
      // Rough cycles per query: the distances it computes plus heap work. Under the pool
      // rule a query typically computes a few dozen distances per pool entry.
      const int64_t expected = ef > 0 ? std::min<int64_t>(effective_budget, 20 * static_cast<int64_t>(ef) + 100)
                                      : effective_budget;
      parallel_for(q, expected * (dim + 40), search_range);
    }
    OP_REQUIRES(ctx, !out_of_memory.load(),
                tensorflow::errors::ResourceExhausted("out of memory for FANNG search buffers"));
  }

 private:
  Metric metric_;
  bool check_vectors_ = true;
};

REGISTER_KERNEL_BUILDER(Name("HybridKeras>FanngSearch").Device(DEVICE_CPU), FanngSearchOp);

}  // namespace
}  // namespace fanng
}  // namespace hybrid_keras
