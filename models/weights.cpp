#include "models/weights.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <mutex>
#include <optional>
#include <set>

#include "ops/error.h"
#include "models/bnb_nf4.h"
#include "ops/random.h"
#include "models/lora.h"
#include "models/safetensors.h"
#include "ops/cuda_common.h"
#include "ops/fp16.h"
#include "ops/nf4.h"

namespace loom {

namespace {

// The seven projection matrices of LayerWeights in LoraTarget order.
std::vector<float> LayerWeights::* const kProjections[kNumTargets] = {
    &LayerWeights::q, &LayerWeights::k, &LayerWeights::v, &LayerWeights::o,
    &LayerWeights::gate, &LayerWeights::up, &LayerWeights::down};

}  // namespace

std::vector<float>* projection(LayerWeights& lw, int t) { return &(lw.*kProjections[t]); }
const std::vector<float>* projection(const LayerWeights& lw, int t) {
  return projection(const_cast<LayerWeights&>(lw), t);
}

namespace {

std::string layer_prefix(int l) { return cat("model.layers.", l, "."); }

// A projection weight: plain (bf16/fp16/fp32) or bitsandbytes NF4 (dequantized to fp32).
std::vector<float> read_matrix(const Checkpoint& ck, const std::string& name, int64_t rows, int64_t cols) {
  if (is_bnb_nf4(ck, name)) {
    Nf4Host q = read_bnb_nf4(ck, name, rows, cols);
    std::vector<float> w(rows * cols);
    nf4_dequantize_ref(w.data(), q);
    return w;
  }
  return ck.read_f32(name, {rows, cols});
}

// How a checkpoint stores the experts of its sparse layers (weights.h).
enum class ExpertForm { kPerExpert, kFused };

// One per-layer tensor of an HF checkpoint: its name, where it lives in LayerWeights (from element
// `offset` of the field: an expert's matrix is a slice of the layer's expert stack), its shape as
// config.json makes it (and the keys behind that shape, for messages), and what it is.
struct LayerTensor {
  enum Kind { kNorm, kBias, kProjection, kRouter, kExpert };
  std::string name;                           // "model.layers.3.self_attn.q_proj.weight"
  std::vector<float> LayerWeights::*field;
  std::vector<int64_t> shape;                 // (out, in) for a matrix, as torch nn.Linear
  const char* keys;                           // "hidden_size, intermediate_size"
  Kind kind;
  int target = -1;                            // a projection's LoraTarget; an expert matrix: 3·expert + (0 gate, 1 up, 2 down)
  int64_t offset = 0;                         // first element in the field
};

// The MoE config.json keys behind the expert shapes, named as each family's config.json writes them.
const char* expert_keys(const ModelConfig& m) {
  return m.arch == "mixtral" ? "num_local_experts, intermediate_size, hidden_size"
                             : "num_experts, moe_intermediate_size, hidden_size";
}

// The router and experts of sparse layer l (weights.h names both forms).
void add_sparse_mlp(std::vector<LayerTensor>& t, const ModelConfig& m, int l, ExpertForm form) {
  using T = LayerTensor;
  using W = LayerWeights;
  const std::string p = layer_prefix(l);
  const bool mixtral = m.arch == "mixtral";
  const std::string block = p + (mixtral && form == ExpertForm::kPerExpert ? "block_sparse_moe." : "mlp.");
  const int64_t E = m.num_experts, C = m.C, FE = m.expert_F;
  const char* keys = expert_keys(m);
  t.push_back({block + "gate.weight", &W::router, {E, C}, mixtral ? "num_local_experts, hidden_size"
                                                                   : "num_experts, hidden_size", T::kRouter});
  if (form == ExpertForm::kFused) {
    t.push_back({block + "experts.gate_up_proj", &W::experts_gate_up, {E, 2 * FE, C}, keys, T::kExpert});
    t.push_back({block + "experts.down_proj", &W::experts_down, {E, C, FE}, keys, T::kExpert});
    return;
  }
  const char* const names[3] = {mixtral ? "w1" : "gate_proj", mixtral ? "w3" : "up_proj", mixtral ? "w2" : "down_proj"};
  for (int64_t e = 0; e < E; ++e) {
    const std::string x = cat(block, "experts.", e, ".");
    t.push_back({x + names[0] + ".weight", &W::experts_gate_up, {FE, C}, keys, T::kExpert, int(3 * e), e * 2 * FE * C});
    t.push_back({x + names[1] + ".weight", &W::experts_gate_up, {FE, C}, keys, T::kExpert, int(3 * e + 1),
                 (e * 2 + 1) * FE * C});
    t.push_back({x + names[2] + ".weight", &W::experts_down, {C, FE}, keys, T::kExpert, int(3 * e + 2), e * C * FE});
  }
}

// The one list of a layer's tensors, walked by loading, the checkpoint audit, random init and saving.
std::vector<LayerTensor> layer_tensors(const ModelConfig& m, int l, ExpertForm form = ExpertForm::kPerExpert) {
  using T = LayerTensor;
  using W = LayerWeights;
  const std::string p = layer_prefix(l);
  const int64_t q = int64_t(m.H) * m.D, kv = int64_t(m.KVH) * m.D;
  std::vector<T> t = {
      {p + "input_layernorm.weight", &W::ln1, {m.C}, "hidden_size", T::kNorm},
      {p + "post_attention_layernorm.weight", &W::ln2, {m.C}, "hidden_size", T::kNorm},
  };
  const char* keys[kNumTargets] = {"hidden_size, num_attention_heads, head_dim",
                                   "hidden_size, num_key_value_heads, head_dim",
                                   "hidden_size, num_key_value_heads, head_dim",
                                   "hidden_size, num_attention_heads, head_dim",
                                   "hidden_size, intermediate_size",
                                   "hidden_size, intermediate_size",
                                   "hidden_size, intermediate_size"};
  const bool sparse = m.is_moe_layer(l);
  for (int target = 0; target < kNumTargets; ++target) {
    if (sparse && target >= kGate) break;  // the sparse block replaces the dense MLP
    const auto [in, out] = projection_shape(m, LoraTarget(target));
    t.push_back({p + lora_module_path(LoraTarget(target)) + ".weight", kProjections[target], {out, in}, keys[target],
                 T::kProjection, target});
  }
  if (sparse) add_sparse_mlp(t, m, l, form);
  if (m.qkv_bias) {
    t.push_back({p + "self_attn.q_proj.bias", &W::q_bias, {q}, "num_attention_heads, head_dim", T::kBias});
    t.push_back({p + "self_attn.k_proj.bias", &W::k_bias, {kv}, "num_key_value_heads, head_dim", T::kBias});
    t.push_back({p + "self_attn.v_proj.bias", &W::v_bias, {kv}, "num_key_value_heads, head_dim", T::kBias});
  }
  if (m.o_bias) t.push_back({p + "self_attn.o_proj.bias", &W::o_bias, {m.C}, "hidden_size", T::kBias});
  if (m.mlp_bias) {
    t.push_back({p + "mlp.gate_proj.bias", &W::gate_bias, {m.F}, "intermediate_size", T::kBias});
    t.push_back({p + "mlp.up_proj.bias", &W::up_bias, {m.F}, "intermediate_size", T::kBias});
    t.push_back({p + "mlp.down_proj.bias", &W::down_bias, {m.C}, "hidden_size", T::kBias});
  }
  if (m.qk_norm) {
    t.push_back({p + "self_attn.q_norm.weight", &W::q_norm, {m.D}, "head_dim", T::kNorm});
    t.push_back({p + "self_attn.k_norm.weight", &W::k_norm, {m.D}, "head_dim", T::kNorm});
  }
  return t;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The expert stacks of a sparse layer, zero-sized to be filled slice by slice.
void size_expert_stacks(const ModelConfig& m, int l, LayerWeights& lw) {
  if (!m.is_moe_layer(l)) return;
  const size_t per_expert = size_t(m.C) * size_t(m.expert_F);
  lw.experts_gate_up.assign(size_t(m.num_experts) * 2 * per_expert, 0.f);
  lw.experts_down.assign(size_t(m.num_experts) * per_expert, 0.f);
}

// v into t's place in lw: the whole field, or its slice at t.offset.
void place(LayerWeights& lw, const LayerTensor& t, std::vector<float> v) {
  std::vector<float>& dst = lw.*t.field;
  if (dst.empty())
    dst = std::move(v);
  else
    std::copy(v.begin(), v.end(), dst.begin() + t.offset);
}

bool is_matrix(const LayerTensor& t) { return t.kind != LayerTensor::kNorm && t.kind != LayerTensor::kBias && t.shape.size() == 2; }

// The form of ck's experts: fused as soon as one fused expert tensor is there.
ExpertForm expert_form(const Checkpoint& ck) {
  const auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const std::string& name : ck.names())
    if (ends_with(name, ".experts.gate_up_proj") || ends_with(name, ".experts.down_proj")) return ExpertForm::kFused;
  return ExpertForm::kPerExpert;
}

void load_layer(const Checkpoint& ck, const ModelConfig& m, int l, ExpertForm form, LayerWeights& lw) {
  size_expert_stacks(m, l, lw);
  for (const LayerTensor& t : layer_tensors(m, l, form))
    place(lw, t, is_matrix(t) ? read_matrix(ck, t.name, t.shape[0], t.shape[1]) : ck.read_f32(t.name, t.shape));
}

// Companions bitsandbytes stores beside an NF4 weight (bnb_nf4.h); read_bnb_nf4 validates them.
const char* const kNf4Parts[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                 ".quant_state.bitsandbytes__nf4"};

// "563 TB", "1.2 GB", "0.293 MB": sizes for messages.
std::string size_str(double bytes) {
  if (bytes >= 1e12) return cat(std::setprecision(3), bytes / 1e12, " TB");
  if (bytes >= 1e9) return cat(std::setprecision(3), bytes / 1e9, " GB");
  return cat(std::setprecision(3), bytes / 1e6, " MB");
}

// Compares a checkpoint's tensor list with the tensors a config implies, from the headers alone:
// nothing is read or allocated by the config's sizes, so a config.json describing a model of
// terabytes is refused here, with its size, before anything tries to hold it.
class TensorAudit {
 public:
  TensorAudit(const Checkpoint& ck, const ModelConfig& m) : ck_(ck), m_(m) {}

  // A bf16/fp16/fp32 tensor; `keys` names the config.json keys its shape comes from.
  void plain(const std::string& name, const std::vector<int64_t>& shape, const char* keys) {
    const TensorView& t = need(name);
    LOOM_CHECK(t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16, "tensor '", name, "' in ",
               t.file, " has dtype ", t.dtype_str, "; expected F32, F16 or BF16");
    if (t.shape != shape)
      fail("tensor '", name, "' in ", t.file, " has shape ", shape_str(t.shape), ", but config.json (", keys,
           ") makes it ", shape_str(shape), mismatch_hint());
  }

  // A projection weight (rows, cols): plain, or bitsandbytes NF4 with its companion tensors.
  void matrix(const std::string& name, int64_t rows, int64_t cols, const char* keys) {
    if (!is_bnb_nf4(ck_, name)) return plain(name, {rows, cols}, keys);
    const TensorView& t = need(name);
    const uint64_t want = (uint64_t(rows) * uint64_t(cols) + 1) / 2;
    if (t.nbytes != want)
      fail("tensor '", name, "' in ", t.file, " holds ", t.nbytes, " bytes of NF4 codes, but config.json (", keys,
           ") makes it [", rows, ", ", cols, "], ", want, " bytes", mismatch_hint());
    for (const char* part : kNf4Parts)
      if (ck_.has(name + part)) used_.insert(name + part);
  }

  // A tied model's lm_head.weight is accepted only as a copy of the embedding (transformers ties
  // it and never reads it); a different one means tie_word_embeddings is wrong.
  void tied_head() {
    if (!ck_.has("lm_head.weight")) return;
    const TensorView& head = need("lm_head.weight");
    const TensorView& embed = ck_.get("model.embed_tokens.weight");
    LOOM_CHECK(head.dtype == embed.dtype && head.shape == embed.shape &&
                   std::memcmp(head.data, embed.data, head.nbytes) == 0,
               "config.json sets tie_word_embeddings: true, but ", ck_.path(),
               " holds an lm_head.weight different from model.embed_tokens.weight; set tie_word_embeddings: false");
  }

  // Older checkpoints carry RoPE's inv_freq buffers; loom computes them from config.json, as
  // transformers does.
  void optional_buffer(const std::string& name) {
    if (ck_.has(name)) used_.insert(name);
  }

  // Every tensor the walk did not claim is an error: ignoring weights would run another model.
  void check_all_used() const {
    std::vector<std::string> unused;
    for (const std::string& name : ck_.names())
      if (!used_.count(name)) unused.push_back(name);
    if (unused.empty()) return;
    std::string list;
    for (size_t i = 0; i < unused.size() && i < 5; ++i) list += cat(i ? ", " : "", "'", unused[i], "'");
    if (unused.size() > 5) list += cat(" and ", unused.size() - 5, " more");
    const int layers = checkpoint_layers();
    fail(ck_.path(), " holds ", unused.size(), " tensor", unused.size() > 1 ? "s" : "", " the model does not use: ",
         list, "; ",
         layers > m_.L ? cat("config.json's num_hidden_layers is ", m_.L, " but the checkpoint has ", layers, " layers")
                       : cat("config.json (", layout_keys(), ") does not describe them"),
         ": is it the checkpoint's own config.json?");
  }

 private:
  // The config.json keys that decide which tensors a layer has.
  std::string layout_keys() const {
    return cat("architectures, attention_bias, mlp_bias, tie_word_embeddings",
               m_.is_moe() ? ", mlp_only_layers, decoder_sparse_step" : "");
  }

  const TensorView& need(const std::string& name) {
    if (!ck_.has(name)) {
      const int layers = checkpoint_layers();
      fail("tensor '", name, "' not found in ", ck_.path(), " (", ck_.names().size(), " tensors); ",
           layers < m_.L ? cat("config.json's num_hidden_layers is ", m_.L, " but the checkpoint has ", layers,
                               " layers")
                         : cat("config.json (", layout_keys(), ") expects it"),
           ": is it the checkpoint's own config.json?");
    }
    used_.insert(name);
    return ck_.get(name);
  }

  // 1 + the highest N of a "model.layers.N." tensor.
  int checkpoint_layers() const {
    const std::string prefix = "model.layers.";
    int layers = 0;
    for (const std::string& name : ck_.names())
      if (name.compare(0, prefix.size(), prefix) == 0)
        layers = std::max(layers, 1 + std::atoi(name.c_str() + prefix.size()));
    return layers;
  }

  // What the config asks for against what the files hold, so a config.json of another model
  // (or a typo adding zeros) shows at once.
  std::string mismatch_hint() const {
    double stored = 0;
    for (const std::string& name : ck_.names()) stored += double(ck_.get(name).nbytes);
    return cat("; config.json describes ", std::setprecision(3), m_.total_params(), " parameters (",
               size_str(2 * m_.total_params()), " in bf16) while the checkpoint holds ", size_str(stored),
               ": is it the checkpoint's own config.json?");
  }

  const Checkpoint& ck_;
  const ModelConfig& m_;
  std::set<std::string> used_;
};

float bf16_round(float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); }

// Matrix values: U(-a, a) with a = std·√3, rounded to bf16.
std::vector<float> random_matrix(uint64_t seed, uint64_t stream, int64_t n, double std) {
  const float a = float(std * std::sqrt(3.0));
  std::vector<float> v(n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) v[i] = bf16_round(a * random_symmetric(seed, stream, i));
  return v;
}

// The random stream (ops/random.h) of a matrix: the dense streams 16 + 7·l + target as before MoE,
// the router and experts of sparse layers in streams of their own above 2^32.
uint64_t random_stream(const ModelConfig& m, int l, const LayerTensor& t) {
  if (t.kind == LayerTensor::kProjection) return 16 + uint64_t(l) * kNumTargets + uint64_t(t.target);
  const uint64_t sparse = (uint64_t(1) << 32) + uint64_t(l) * (1 + 3 * uint64_t(m.num_experts));
  return t.kind == LayerTensor::kRouter ? sparse : sparse + 1 + uint64_t(t.target);
}

// Norms 1, biases 0, matrices random (see random_weights).
void random_layer(const ModelConfig& m, uint64_t seed, int l, LayerWeights& lw) {
  size_expert_stacks(m, l, lw);
  for (const LayerTensor& t : layer_tensors(m, l)) {
    const int64_t n = numel(t.shape);
    if (is_matrix(t))
      place(lw, t, random_matrix(seed, random_stream(m, l, t), n, m.initializer_range));
    else
      (lw.*t.field).assign(size_t(n), t.kind == LayerTensor::kNorm ? 1.f : 0.f);
  }
}

// Refuses, before allocating, an fp32 host copy larger than this machine's memory: it would end in
// bad_alloc or, with overcommit, in the OOM killer's SIGKILL halfway through loading.
void check_host_memory(const ModelConfig& m) {
  const double bytes = 4 * m.total_params();
  const double physical = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  LOOM_CHECK(physical <= 0 || bytes <= physical, "the CPU reference path holds the model in fp32: ",
             std::setprecision(3), m.total_params(), " parameters need ", size_str(bytes),
             " of host memory, more than this machine's ", size_str(physical),
             "; use a GPU (train.device=cuda, score --device cuda) or a smaller model");
}

ModelWeights collect(const WeightSource& src, const ModelConfig& m) {
  check_host_memory(m);
  ModelWeights w;
  w.embed = src.embed();
  w.final_norm = src.final_norm();
  w.lm_head = src.lm_head();
  w.layers.resize(m.L);
  for (int l = 0; l < m.L; ++l) w.layers[l] = src.layer(l);
  return w;
}

}  // namespace

void check_checkpoint_tensors(const Checkpoint& ck, const ModelConfig& m) {
  TensorAudit audit(ck, m);
  audit.plain("model.embed_tokens.weight", {m.V, m.C}, "vocab_size, hidden_size");
  audit.plain("model.norm.weight", {m.C}, "hidden_size");
  if (m.tie_embeddings)
    audit.tied_head();
  else
    audit.plain("lm_head.weight", {m.V, m.C}, "vocab_size, hidden_size");
  const ExpertForm form = expert_form(ck);
  for (int l = 0; l < m.L; ++l) {
    for (const LayerTensor& t : layer_tensors(m, l, form)) {
      if (is_matrix(t))
        audit.matrix(t.name, t.shape[0], t.shape[1], t.keys);
      else
        audit.plain(t.name, t.shape, t.keys);
    }
    audit.optional_buffer(layer_prefix(l) + "self_attn.rotary_emb.inv_freq");
  }
  audit.check_all_used();
}

namespace {

// Whether two configs make the same tensor list (what check_checkpoint_tensors compares).
bool same_tensors(const ModelConfig& a, const ModelConfig& b) {
  auto layers = [](const ModelConfig& m) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> named;
    for (int l = 0; l < m.L; ++l)
      for (const LayerTensor& t : layer_tensors(m, l)) named.emplace_back(t.name, t.shape);
    return named;
  };
  return a.V == b.V && a.C == b.C && a.L == b.L && a.tie_embeddings == b.tie_embeddings && layers(a) == layers(b);
}

// The checkpoint audit_checkpoint opened and audited, until the WeightSource::checkpoint that
// follows it takes it.
struct AuditedCheckpoint {
  std::string dir;
  ModelConfig cfg;
  std::shared_ptr<const Checkpoint> ck;
};
std::mutex g_audited_mutex;
std::optional<AuditedCheckpoint> g_audited;

std::shared_ptr<const Checkpoint> open_and_audit(const std::string& model_dir, const ModelConfig& cfg) {
  auto ck = std::make_shared<const Checkpoint>(Checkpoint::open(model_dir));
  check_checkpoint_tensors(*ck, cfg);
  return ck;
}

}  // namespace

void audit_checkpoint(const std::string& model_dir, const ModelConfig& cfg) {
  std::shared_ptr<const Checkpoint> ck = open_and_audit(model_dir, cfg);
  const std::lock_guard<std::mutex> lock(g_audited_mutex);
  g_audited = AuditedCheckpoint{model_dir, cfg, std::move(ck)};
}

WeightSource WeightSource::checkpoint(const std::string& model_dir, const ModelConfig& cfg) {
  WeightSource s;
  s.cfg_ = cfg;
  {
    const std::lock_guard<std::mutex> lock(g_audited_mutex);
    if (g_audited && g_audited->dir == model_dir && same_tensors(g_audited->cfg, cfg)) s.ck_ = g_audited->ck;
    g_audited.reset();  // taken, or stale: the mapping is not held past the load
  }
  if (!s.ck_) s.ck_ = open_and_audit(model_dir, cfg);
  s.fused_experts_ = expert_form(*s.ck_) == ExpertForm::kFused;
  return s;
}

WeightSource WeightSource::random(const ModelConfig& cfg, uint64_t seed) {
  WeightSource s;
  s.cfg_ = cfg;
  s.seed_ = seed;
  return s;
}

std::vector<float> WeightSource::embed() const {
  const ModelConfig& m = cfg_;
  return ck_ ? ck_->read_f32("model.embed_tokens.weight", {m.V, m.C}) : random_matrix(seed_, 0, int64_t(m.V) * m.C, m.initializer_range);
}

std::vector<float> WeightSource::final_norm() const {
  return ck_ ? ck_->read_f32("model.norm.weight", {cfg_.C}) : std::vector<float>(cfg_.C, 1.f);
}

std::vector<float> WeightSource::lm_head() const {
  const ModelConfig& m = cfg_;
  if (m.tie_embeddings) return {};
  return ck_ ? ck_->read_f32("lm_head.weight", {m.V, m.C}) : random_matrix(seed_, 1, int64_t(m.V) * m.C, m.initializer_range);
}

struct WeightSource::MergedAdapter {
  LoraLayout layout;
  std::vector<float> lora;
};

WeightSource WeightSource::with_merged_adapter(const LoraLayout& layout, std::vector<float> lora) const {
  LOOM_CHECK(int64_t(lora.size()) == layout.total, "an adapter of ", lora.size(), " floats for a layout of ",
             layout.total);
  WeightSource s = *this;
  s.merged_ = std::make_shared<const MergedAdapter>(MergedAdapter{layout, std::move(lora)});
  return s;
}

LayerWeights WeightSource::layer(int l) const {
  LayerWeights lw;
  if (ck_)
    load_layer(*ck_, cfg_, l, fused_experts_ ? ExpertForm::kFused : ExpertForm::kPerExpert, lw);
  else
    random_layer(cfg_, seed_, l, lw);
  if (merged_) merge_lora_layer(lw, l, merged_->layout, merged_->lora.data());
  return lw;
}

ModelWeights load_weights(const std::string& model_dir, const ModelConfig& m) {
  return collect(WeightSource::checkpoint(model_dir, m), m);
}

ModelWeights random_weights(const ModelConfig& m, uint64_t seed) { return collect(WeightSource::random(m, seed), m); }

namespace {

// W (rows·cols at w) replaced by dequantize(quantize_nf4(bf16(W))): bitsandbytes quantizes the bf16 weight.
void nf4_roundtrip(float* w, int64_t n, int blocksize, bool double_quant) {
  for (int64_t i = 0; i < n; ++i) w[i] = bf16_round(w[i]);
  Nf4Host q = nf4_quantize_ref(w, 1, n, blocksize, double_quant);
  nf4_dequantize_ref(w, q);
}

}  // namespace

void apply_nf4_roundtrip(ModelWeights& w, int blocksize, bool double_quant) {
  for (LayerWeights& lw : w.layers) {
    for (int t = 0; t < kNumTargets; ++t) {
      std::vector<float>& m = *projection(lw, t);
      if (!m.empty()) nf4_roundtrip(m.data(), int64_t(m.size()), blocksize, double_quant);
    }
    if (lw.router.empty()) continue;
    // Each expert's gate, up (the two halves of its gate_up rows) and down: E·FE·C values apiece,
    // E from the router (E, C).
    const size_t E = lw.router.size() / lw.ln1.size(), n = lw.experts_down.size() / E;
    for (size_t i = 0; i < 2 * E; ++i) nf4_roundtrip(&lw.experts_gate_up[i * n], int64_t(n), blocksize, double_quant);
    for (size_t e = 0; e < E; ++e) nf4_roundtrip(&lw.experts_down[e * n], int64_t(n), blocksize, double_quant);
  }
}

void save_weights(const std::string& dir, const ModelConfig& m, const ModelWeights& w, DType dtype) {
  LOOM_CHECK(dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32, "save_weights: dtype ",
             dtype_name(dtype), " (BF16, F16 or F32)");
  std::filesystem::create_directories(dir);
  std::vector<std::vector<uint16_t>> store;  // keeps the 16-bit copies alive until written
  std::vector<TensorToWrite> out;
  // The numel(shape) values at v (an expert's matrix: a slice of its stack).
  auto add = [&](const std::string& name, const float* v, std::vector<int64_t> shape) {
    const size_t n = size_t(numel(shape));
    if (dtype == DType::F32) return out.push_back({name, dtype, std::move(shape), v});
    std::vector<uint16_t> b(n);
    for (size_t i = 0; i < n; ++i) b[i] = dtype == DType::BF16 ? float_to_bf16_bits(v[i]) : float_to_f16_bits(v[i]);
    store.push_back(std::move(b));  // moving a vector keeps its buffer: earlier pointers stay valid
    out.push_back({name, dtype, std::move(shape), store.back().data()});
  };
  add("model.embed_tokens.weight", w.embed.data(), {m.V, m.C});
  add("model.norm.weight", w.final_norm.data(), {m.C});
  if (!w.lm_head.empty()) add("lm_head.weight", w.lm_head.data(), {m.V, m.C});
  for (int l = 0; l < m.L; ++l)
    for (const LayerTensor& t : layer_tensors(m, l)) {
      const std::vector<float>& v = w.layers[l].*t.field;
      if (v.empty()) continue;
      LOOM_CHECK(int64_t(v.size()) >= t.offset + numel(t.shape), "save_weights: ", t.name, " holds ", v.size(),
                 " values, fewer than the config's shape ", shape_str(t.shape), " needs");
      add(t.name, v.data() + t.offset, t.shape);
    }
  write_safetensors(dir + "/model.safetensors", out);
  save_model_config(m, dir + "/config.json");
}

}  // namespace loom
