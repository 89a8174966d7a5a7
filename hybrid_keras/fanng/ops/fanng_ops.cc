// TensorFlow registration of the FANNG ops.
//
// The index is plain data (vectors + a neighbour table + entry points) and the ops
// (build, insert, search) are stateless CPU kernels over it, so an index lives in a
// SavedModel as ordinary variables. Vectors are float32, float16 or uint8 (attr T; uint8
// with the attrs scale and offset: value = offset + scale * code). The ops sit under the "HybridKeras>" namespace; saving a model that uses
// them needs tf.saved_model.SaveOptions(namespace_whitelist=["HybridKeras"]).
//
// Every input is validated here with OP_REQUIRES, before any pointer reaches the
// algorithm in fanng_core.h: a bad tensor is an InvalidArgument error, never a crash.

#include <algorithm>
#include <atomic>
#include <cmath>
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
// Build and insertion cost grows with max_degree squared (see fanng_core.h).
constexpr int64_t kMaxDegree = kMaxBuildDegree;
// uint8 distances sum squared code differences in 32-bit lanes (fanng_distance.cc).
constexpr int64_t kMaxCodeDim = 65536;
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
    return InvalidArgument("vectors must be a matrix [rows, dim], got shape ", vectors.shape().DebugString());
  }
  if (vectors.dim_size(1) < 1) {
    return InvalidArgument("vectors must have at least one column, got shape ", vectors.shape().DebugString());
  }
  const int64_t n = vectors.dim_size(0);
  if (n < 1) return InvalidArgument("vectors must have at least one row");
  if (n > kMaxRows) return InvalidArgument("vectors has ", n, " rows; at most ", kMaxRows, " are supported");
  return absl::OkStatus();
}

absl::Status ParseStorage(tensorflow::DataType type, Storage* storage) {
  switch (type) {
    case tensorflow::DT_FLOAT:
      *storage = Storage::kFloat32;
      return absl::OkStatus();
    case tensorflow::DT_HALF:
      *storage = Storage::kFloat16;
      return absl::OkStatus();
    case tensorflow::DT_UINT8:
      *storage = Storage::kUint8;
      return absl::OkStatus();
    default:
      return InvalidArgument("vectors must be float32, float16 or uint8, got ", tensorflow::DataTypeString(type));
  }
}

// The storage attributes every op shares (T, metric, scale, offset), read and checked once.
struct StorageAttrs {
  Storage storage = Storage::kFloat32;
  Metric metric = Metric::kL2;
  float scale = 1.f;
  float offset = 0.f;

  absl::Status Read(OpKernelConstruction* ctx) {
    tensorflow::DataType type;
    std::string metric_name;
    TF_RETURN_IF_ERROR(ctx->GetAttr("T", &type));
    TF_RETURN_IF_ERROR(ctx->GetAttr("metric", &metric_name));
    TF_RETURN_IF_ERROR(ctx->GetAttr("scale", &scale));
    TF_RETURN_IF_ERROR(ctx->GetAttr("offset", &offset));
    TF_RETURN_IF_ERROR(ParseStorage(type, &storage));
    TF_RETURN_IF_ERROR(ParseMetric(metric_name, &metric));
    if (storage == Storage::kUint8) {
      if (!(std::isfinite(scale) && scale > 0.f)) {
        return InvalidArgument("scale must be a positive finite number for uint8 vectors, got ", scale);
      }
      if (!std::isfinite(offset)) return InvalidArgument("offset must be finite, got ", offset);
      if (metric != Metric::kL2) {
        return InvalidArgument("uint8 vectors support metric 'l2' only; store float16 or float32 vectors for 'ip'");
      }
    }
    return absl::OkStatus();
  }
};

// Checks `vectors` (shape, and NaN/inf when `check_values`) and describes it as a Dataset.
absl::Status MakeStoredDataset(const ParallelFor& parallel_for, const Tensor& vectors, const StorageAttrs& attrs,
                               bool check_values, Dataset* out) {
  TF_RETURN_IF_ERROR(ValidateVectors(vectors));
  const int64_t n = vectors.dim_size(0);
  const int64_t dim = vectors.dim_size(1);
  if (attrs.storage == Storage::kUint8 && dim > kMaxCodeDim) {
    return InvalidArgument("uint8 vectors may have at most ", kMaxCodeDim, " columns, got ", dim);
  }
  const char* raw = vectors.tensor_data().data();
  if (check_values) {
    bool finite = true;
    if (attrs.storage == Storage::kFloat32) {
      finite = ParallelAllFinite(parallel_for, reinterpret_cast<const float*>(raw), n * dim);
    } else if (attrs.storage == Storage::kFloat16) {
      finite = AllFiniteHalf(reinterpret_cast<const uint16_t*>(raw), n * dim);
    }
    if (!finite) return InvalidArgument("vectors contains NaN or infinite values");
  }
  *out = MakeDataset(raw, n, dim, attrs.storage, attrs.metric, attrs.scale, attrs.offset);
  return absl::OkStatus();
}

// Checks that every id of the [rows, m] table is in [-1, limit), split over the pool:
// every id is read as an array index.
bool ParallelIdsInRange(const ParallelFor& parallel_for, const int32_t* ids, int64_t count, int32_t limit) {
  constexpr int64_t kChunk = 1 << 16;
  std::atomic<bool> ok(true);
  parallel_for((count + kChunk - 1) / kChunk, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end && ok.load(std::memory_order_relaxed); ++c) {
      const int64_t start = c * kChunk;
      if (!IdsInRange(ids + start, std::min(kChunk, count - start), limit)) ok.store(false, std::memory_order_relaxed);
    }
  });
  return ok.load();
}

// Entry points: an int32 scalar (one vertex) or vector (several), each in [0, limit).
absl::Status ValidateEntryPoints(const Tensor& entry, int64_t limit) {
  if (entry.dims() > 1) {
    return InvalidArgument("entry must be an int32 scalar or vector of vertices, got shape ",
                           entry.shape().DebugString());
  }
  if (entry.NumElements() < 1) return InvalidArgument("entry must list at least one vertex");
  const auto values = entry.flat<int32_t>();
  for (int64_t i = 0; i < values.size(); ++i) {
    if (values(i) < 0 || values(i) >= limit) {
      return InvalidArgument("entry vertices must be in [0, ", limit, "), got ", values(i));
    }
  }
  return absl::OkStatus();
}

// Runs fn, turning std::bad_alloc into a ResourceExhausted error: build and search
// buffers grow with the input, and running out must not terminate the process.
template <typename Fn>
void ReportingOutOfMemory(OpKernelContext* ctx, const std::string& what, const Fn& fn) {
  try {
    fn();
  } catch (const std::bad_alloc&) {
    ctx->SetStatus(tensorflow::errors::ResourceExhausted("out of memory ", what));
  }
}

// The attributes every op takes to describe its stored vectors.
#define HK_FANNG_STORAGE_ATTRS                             \
  Attr("T: {float, half, uint8} = DT_FLOAT")               \
      .Attr("metric: {'l2', 'ip'} = 'l2'")                 \
      .Attr("scale: float = 1.0")                          \
      .Attr("offset: float = 0.0")

const char kStorageDoc[] = R"doc(T: how `vectors` are stored: float32, float16 or uint8 codes.
metric: 'l2' (squared Euclidean distance) or 'ip' (negative inner product); uint8
  supports 'l2' only. Distances are those of the dequantised values.
scale: uint8 only: a code c stands for offset + scale * c (scale > 0).
offset: uint8 only, see scale.
)doc";

// ------------------------------------------------------------------------------ build

REGISTER_OP("HybridKeras>FanngBuild")
    .Input("vectors: T")
    .Output("neighbours: int32")
    .Output("entry: int32")
    .Output("entry_points: int32")
    .HK_FANNG_STORAGE_ATTRS
    .Attr("max_degree: int >= 1 = 32")
    .Attr("seed: int = 0")
    .Attr("candidates: int >= 0 = 0")
    .Attr("refine_iterations: int >= 0 = 1")
    .Attr("connect: bool = true")
    .Attr("num_entry_points: int >= 1 = 1")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle vectors;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &vectors));
      int64_t max_degree, num_entry_points;
      TF_RETURN_IF_ERROR(c->GetAttr("max_degree", &max_degree));
      TF_RETURN_IF_ERROR(c->GetAttr("num_entry_points", &num_entry_points));
      c->set_output(0, c->Matrix(c->Dim(vectors, 0), max_degree));
      c->set_output(1, c->Scalar());
      c->set_output(2, c->Vector(num_entry_points));
      return absl::OkStatus();
    })
    .Doc(std::string(R"doc(
Builds a FANNG nearest-neighbour graph over the rows of `vectors`.

neighbours: [N, max_degree] out-edges of every vertex, shortest first, -1 padded.
entry: the vertex nearest to the mean of the vectors; every vertex is reachable from it.
entry_points: [num_entry_points] vertices searches start from: `entry`, then the
  vertices nearest to k-means centroids of a sample (repeats of `entry` where a cluster
  is empty).
max_degree: most out-edges per vertex (at most 256).
seed: makes the build reproducible; the result does not depend on the thread count.
candidates: length of each vertex's candidate list before occlusion pruning: its
  ceil(candidates / 2) (approximate) nearest neighbours plus up to as many reverse
  neighbours (0: max(2 * max_degree, 32); at most 4096).
refine_iterations: traverse-add passes (each walks from the entry to every vertex).
connect: add edges so that every vertex is reachable from `entry`.
num_entry_points: length of `entry_points` (1: `entry` alone; at most 4096).
)doc") + kStorageDoc);

constexpr int64_t kMaxEntryPoints = 4096;

class FanngBuildOp : public OpKernel {
 public:
  explicit FanngBuildOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t max_degree, candidates, refine_iterations, seed, entry_points;
    OP_REQUIRES_OK(ctx, storage_.Read(ctx));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_degree", &max_degree));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("seed", &seed));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("candidates", &candidates));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("refine_iterations", &refine_iterations));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("connect", &options_.connect));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_entry_points", &entry_points));
    OP_REQUIRES(ctx, max_degree >= 1 && max_degree <= kMaxDegree,
                InvalidArgument("max_degree must be in [1, ", kMaxDegree, "], got ", max_degree));
    OP_REQUIRES(ctx, candidates >= 0 && candidates <= kMaxCandidates,
                InvalidArgument("candidates must be in [0, ", kMaxCandidates, "] (0 = automatic), got ", candidates));
    OP_REQUIRES(ctx, refine_iterations >= 0 && refine_iterations <= 1000,
                InvalidArgument("refine_iterations must be in [0, 1000], got ", refine_iterations));
    OP_REQUIRES(ctx, entry_points >= 1 && entry_points <= kMaxEntryPoints,
                InvalidArgument("num_entry_points must be in [1, ", kMaxEntryPoints, "], got ", entry_points));
    options_.metric = storage_.metric;
    options_.max_degree = static_cast<int>(max_degree);
    options_.candidates = static_cast<int>(candidates);
    options_.refine_iterations = static_cast<int>(refine_iterations);
    options_.seed = static_cast<uint64_t>(seed);
    options_.entry_points = static_cast<int>(entry_points);
  }

  void Compute(OpKernelContext* ctx) override {
    const ParallelFor parallel_for = MakeParallelFor(ctx);
    Dataset dataset;
    OP_REQUIRES_OK(ctx, MakeStoredDataset(parallel_for, ctx->input(0), storage_, /*check_values=*/true, &dataset));
    const int64_t n = dataset.n;
    Tensor* neighbours = nullptr;
    Tensor* entry = nullptr;
    Tensor* entry_points = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, options_.max_degree}), &neighbours));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &entry));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({options_.entry_points}), &entry_points));
    int32_t* entry_points_out = entry_points->flat<int32_t>().data();
    ReportingOutOfMemory(ctx, "building a FANNG graph", [&] {
      BuildGraph(dataset, options_, parallel_for, neighbours->flat<int32_t>().data(), entry_points_out);
    });
    entry->scalar<int32_t>()() = entry_points_out[0];
  }

 private:
  StorageAttrs storage_;
  BuildOptions options_;
};

REGISTER_KERNEL_BUILDER(Name("HybridKeras>FanngBuild").Device(DEVICE_CPU), FanngBuildOp);

// ------------------------------------------------------------------------------ insert

REGISTER_OP("HybridKeras>FanngInsert")
    .Input("vectors: T")
    .Input("neighbours: int32")
    .Input("entry_points: int32")
    .Input("start: int32")
    .Output("updated_neighbours: int32")
    .HK_FANNG_STORAGE_ATTRS
    .Attr("candidates: int >= 0 = 0")
    .Attr("ef: int >= 0 = 0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle vectors, neighbours, entry, scalar;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &vectors));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &neighbours));
      TF_RETURN_IF_ERROR(c->WithRankAtMost(c->input(2), 1, &entry));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 0, &scalar));
      DimensionHandle merged;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(vectors, 0), c->Dim(neighbours, 0), &merged));
      c->set_output(0, neighbours);
      return absl::OkStatus();
    })
    .Doc(std::string(R"doc(
Links rows [start, N) of `vectors` into the FANNG graph over rows [0, start).

neighbours: [N, M] (M <= 256): the graph over rows [0, start) in its first `start` rows
  (ids in [-1, start)); later rows are ignored.
entry_points: the graph's entry points (scalar or vector, in [0, start)); the first is
  its entry, from which the new vertices are made reachable.
start: the first new row, 1 <= start <= N.
updated_neighbours: [N, M] the graph over all rows. Each new vertex gets the edges the
  occlusion rule keeps from its nearest linked and new vertices (found by a search with
  a pool of `ef`), reverse edges, and an edge from where a greedy walk from the entry
  towards it stops: the build's rules, applied in row order, so the result does not
  depend on the thread count.
candidates: nearest vertices the occlusion rule chooses from (0: max(2 * M, 32)).
ef: pool of the search for them (0: `candidates`).
)doc") + kStorageDoc);

class FanngInsertOp : public OpKernel {
 public:
  explicit FanngInsertOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t candidates, ef;
    OP_REQUIRES_OK(ctx, storage_.Read(ctx));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("candidates", &candidates));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ef", &ef));
    OP_REQUIRES(ctx, candidates <= kMaxCandidates,
                InvalidArgument("candidates must be in [0, ", kMaxCandidates, "] (0 = automatic), got ", candidates));
    OP_REQUIRES(ctx, ef <= kMaxCandidates,
                InvalidArgument("ef must be in [0, ", kMaxCandidates, "] (0 = candidates), got ", ef));
    options_.candidates = static_cast<int>(candidates);
    options_.ef = static_cast<int>(ef);
  }

  void Compute(OpKernelContext* ctx) override {
    const ParallelFor parallel_for = MakeParallelFor(ctx);
    Dataset dataset;
    OP_REQUIRES_OK(ctx, MakeStoredDataset(parallel_for, ctx->input(0), storage_, /*check_values=*/true, &dataset));
    const Tensor& neighbours = ctx->input(1);
    const Tensor& entry_points = ctx->input(2);
    const Tensor& start_t = ctx->input(3);
    const int64_t n = dataset.n;
    OP_REQUIRES(ctx, neighbours.dims() == 2 && neighbours.dim_size(0) == n,
                InvalidArgument("neighbours must be an int32 matrix with one row per vector (", n, "), got shape ",
                                neighbours.shape().DebugString()));
    const int64_t m = neighbours.dim_size(1);
    OP_REQUIRES(ctx, m >= 1 && m <= kMaxDegree,
                InvalidArgument("neighbours must have between 1 and ", kMaxDegree, " columns, got ", m));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(start_t.shape()),
                InvalidArgument("start must be an int32 scalar, got shape ", start_t.shape().DebugString()));
    const int64_t start = start_t.scalar<int32_t>()();
    OP_REQUIRES(ctx, start >= 1 && start <= n,
                InvalidArgument("start must be in [1, ", n, "] (the rows already linked), got ", start));
    OP_REQUIRES_OK(ctx, ValidateEntryPoints(entry_points, start));
    const int32_t* graph = neighbours.flat<int32_t>().data();
    OP_REQUIRES(ctx, ParallelIdsInRange(parallel_for, graph, start * m, static_cast<int32_t>(start)),
                InvalidArgument("neighbours ids of the first ", start, " rows must be in [-1, ", start, ")"));
    Tensor* updated = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, neighbours.shape(), &updated));
    int32_t* out = updated->flat<int32_t>().data();
    std::copy(graph, graph + n * m, out);
    if (start == n) return;
    ReportingOutOfMemory(ctx, "inserting into a FANNG graph", [&] {
      InsertVertices(dataset, static_cast<int>(m), options_, entry_points.flat<int32_t>().data(),
                     entry_points.NumElements(), start, parallel_for, out);
    });
  }

 private:
  StorageAttrs storage_;
  InsertOptions options_;
};

REGISTER_KERNEL_BUILDER(Name("HybridKeras>FanngInsert").Device(DEVICE_CPU), FanngInsertOp);

// ------------------------------------------------------------------------------ search

REGISTER_OP("HybridKeras>FanngSearch")
    .Input("vectors: T")
    .Input("neighbours: int32")
    .Input("entry: int32")
    .Input("queries: float32")
    .Input("k: int32")
    .Input("budget: int32")
    .Input("ef: int32")
    .Output("ids: int32")
    .Output("distances: float32")
    .HK_FANNG_STORAGE_ATTRS
    .Attr("check_vectors: bool = true")
    .Attr("check_neighbours: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle vectors, neighbours, queries, entry, scalar;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &vectors));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &neighbours));
      TF_RETURN_IF_ERROR(c->WithRankAtMost(c->input(2), 1, &entry));
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
    .Doc(std::string(R"doc(
Finds the k nearest rows of `vectors` for every row of `queries` with FANNG's
backtracking search over the graph made by FanngBuild.

neighbours: [N, M] out-edges, shortest first; a row is read up to its first -1
  (M <= 65535).
entry: the vertex every search starts from, or a vector of them (FanngBuild's
  entry_points): each query computes its distance to all of them and walks from the
  closest.
k: results per query, 1 <= k <= N.
budget: most distance computations per query (>= 1; the entry points count); with
  ef = 0 a budget >= N searches everything reachable from the entry points.
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
check_neighbours: scan all of `neighbours` for ids outside [-1, N) before searching (it
  reads the whole table, a few percent of a 1,000-query call on a 200k-vertex graph). The
  search bounds-checks every id it follows anyway, so skipping the scan cannot make the
  kernel read out of bounds: a bad id the search meets fails the call with the same
  error; one in a row no query reaches goes unnoticed.
)doc") + kStorageDoc);

class FanngSearchOp : public OpKernel {
 public:
  explicit FanngSearchOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, storage_.Read(ctx));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("check_vectors", &check_vectors_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("check_neighbours", &check_neighbours_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& neighbours = ctx->input(1);
    const Tensor& entry_t = ctx->input(2);
    const Tensor& queries = ctx->input(3);
    const Tensor& k_t = ctx->input(4);
    const Tensor& budget_t = ctx->input(5);
    const Tensor& ef_t = ctx->input(6);
    const ParallelFor parallel_for = MakeParallelFor(ctx);

    Dataset dataset;
    OP_REQUIRES_OK(ctx, MakeStoredDataset(parallel_for, ctx->input(0), storage_, check_vectors_, &dataset));
    const int64_t n = dataset.n;
    const int64_t dim = dataset.dim;
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
    OP_REQUIRES_OK(ctx, ValidateEntryPoints(entry_t, n));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(k_t.shape()),
                InvalidArgument("k must be an int32 scalar, got shape ", k_t.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(budget_t.shape()),
                InvalidArgument("budget must be an int32 scalar, got shape ", budget_t.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(ef_t.shape()),
                InvalidArgument("ef must be an int32 scalar, got shape ", ef_t.shape().DebugString()));
    const int32_t k = k_t.scalar<int32_t>()();
    const int32_t budget = budget_t.scalar<int32_t>()();
    const int32_t ef = ef_t.scalar<int32_t>()();
    OP_REQUIRES(ctx, k >= 1 && k <= n, InvalidArgument("k must be in [1, ", n, "] (the number of vectors), got ", k));
    OP_REQUIRES(ctx, budget >= 1, InvalidArgument("budget must be >= 1, got ", budget));
    OP_REQUIRES(ctx, ef >= 0, InvalidArgument("ef must be >= 0 (0: stop at the budget only), got ", ef));

    const int64_t m = neighbours.dim_size(1);
    OP_REQUIRES(ctx, m <= kMaxSearchDegree,
                InvalidArgument("neighbours may have at most ", kMaxSearchDegree, " columns, got ", m));
    const int32_t* graph = neighbours.flat<int32_t>().data();
    OP_REQUIRES(ctx, !check_neighbours_ || ParallelIdsInRange(parallel_for, graph, n * m, static_cast<int32_t>(n)),
                InvalidArgument("neighbours ids must be in [-1, ", n, ")"));
    const float* query_data = queries.flat<float>().data();
    const int64_t q = queries.dim_size(0);
    OP_REQUIRES(ctx, ParallelAllFinite(parallel_for, query_data, q * dim),
                InvalidArgument("queries contains NaN or infinite values"));

    Tensor* ids = nullptr;
    Tensor* distances = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({q, k}), &ids));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({q, k}), &distances));
    if (q == 0) return;

    const int32_t* entry_points = entry_t.flat<int32_t>().data();
    const int64_t entry_count = entry_t.NumElements();
    int32_t* ids_out = ids->flat<int32_t>().data();
    float* dist_out = distances->flat<float>().data();
    const int64_t effective_budget = std::min<int64_t>(budget, n);
    // Scratch buffers grow to O(n + budget) per thread; an allocation failure is reported,
    // never allowed to escape the kernel.
    std::atomic<bool> out_of_memory(false);
    std::atomic<bool> ids_out_of_range(false);
    auto search_range = [&](int64_t begin, int64_t end) {
      try {
        SearchScratch& scratch = ThreadLocalSearchScratch();
        std::vector<float> prepared(dataset.QueryNeedsPreparing() ? dim : 0);
        for (int64_t i = begin; i < end; ++i) {
          const float* query = query_data + i * dim;
          if (dataset.QueryNeedsPreparing()) {
            dataset.PrepareQuery(query, prepared.data());
            query = prepared.data();
          }
          if (!SearchOne(dataset, graph, m, entry_points, entry_count, query, k, effective_budget,
                         std::min<int64_t>(ef, n), scratch, ids_out + i * k, dist_out + i * k)) {
            ids_out_of_range.store(true);
          }
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
    OP_REQUIRES(ctx, !ids_out_of_range.load(), InvalidArgument("neighbours ids must be in [-1, ", n, ")"));
  }

 private:
  StorageAttrs storage_;
  bool check_vectors_ = true;
  bool check_neighbours_ = true;
};

REGISTER_KERNEL_BUILDER(Name("HybridKeras>FanngSearch").Device(DEVICE_CPU), FanngSearchOp);

}  // namespace
}  // namespace fanng
}  // namespace hybrid_keras
