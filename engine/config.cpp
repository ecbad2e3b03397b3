// YAML experiment config -> TrainConfig.
//
// Format: seven optional top-level mappings, each key a field of the matching struct in config.h:
//
//   model:  {path, preset, quant, double_quant, init_seed}
//   lora:   {r, alpha, dropout, rslora, targets, init_from}
//   data:   {path, synthetic, synthetic_docs, format, tokenizer, template, train_on, max_seq_len,
//            max_prompt_len, overlong, on_bad_line, cache_dir, eval_path, eval_split}
//   train:  {device, objective, token_budget, global_batch, steps, epochs, lr, schedule, warmup_steps,
//            min_lr_ratio, weight_decay, beta1, beta2, eps, max_grad_norm, recompute, offload, mlp_tile, seed,
//            log_every,
//            divergence_check, divergence_window, divergence_factor, zero_grad_steps, eval_every,
//            sample_every, sample_prompts, sample_max_new_tokens,
//            early_stopping_patience}
//   dpo:    {beta, loss_type, label_smoothing, precompute_reference}
//   orpo:   {lambda}
//   output: {dir, checkpoint_every, keep_checkpoints, export, gguf_type, resume, on_change, keep_best}
//
// A missing key keeps the member initialiser of its options struct (config.h names them). Overrides
// "section.key=value" are applied after the file, the value read as one YAML node (scalar or flow
// sequence). One table (fields_of) maps every YAML key to its member; reading, overriding, writing
// and key suggestions all use it. A choice key (an enum member) is turned from its name into the
// enum as it is read, and written back as that name.
// Problems are collected, not thrown one at a time: a run fails once, listing everything to fix.
// Every numeric key states its range in that table; a value is checked as it is read (so the
// message has its line) and again by validate(). A config is one YAML document of UTF-8 text, at
// most kMaxConfigBytes; yaml-cpp bounds its own nesting (DepthGuard), reported as "nested too deep".
#include "engine/config.h"

#include <yaml-cpp/depthguard.h>    // YAML::DeepRecursion
#include <yaml-cpp/eventhandler.h>  // counting documents without LoadAll
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <type_traits>
#include <utility>
#include <variant>

#include "data/chat_template.h"
#include "data/utf8.h"
#include "ops/error.h"
#include "ops/files.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

// ---------------------------------------------------------------------------------------------
// The field table

// A key whose value is one of a fixed list of names: an enum member, the names in enum order (the
// names arrays beside each enum).
struct Choice {
  const char* const* names;
  size_t count;
  void* member;
  size_t (*get)(const void* member);
  void (*set)(void* member, size_t index);

  std::vector<std::string> allowed() const { return {names, names + count}; }
  const char* name() const { return names[get(member)]; }
};

template <class E, size_t N>
Choice choice(E* member, const std::array<const char*, N>& names) {
  return {names.data(), N, member, [](const void* m) { return size_t(*static_cast<const E*>(m)); },
          [](void* m, size_t i) { *static_cast<E*>(m) = E(i); }};
}

using FieldRef = std::variant<int*, float*, double*, bool*, std::string*, std::vector<std::string>*, Choice>;

// The values a numeric key accepts, as messages state them: "in (0, 1]", "in [1, 4096]". NaN is
// in no range, and neither is anything that overflowed while being read.
struct Range {
  double lo = 0, hi = 0;
  bool lo_open = false, hi_open = false;  // ( ) exclude the bound, [ ] include it
  const char* note = "";                  // what a special value means: "0 = only the final checkpoint"

  bool contains(double v) const { return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi); }
  std::string text() const;
};

// Seeds: any non-negative int. -1 is refused rather than taken as a fixed seed, because other tools
// read it as "pick a random seed", which loom never does (a run is reproducible from its config).
constexpr Range kSeed{0, INT_MAX};
// Step counts (train.steps, warmup_steps, log_every, checkpoint_every): the schedule and the
// progress line count steps in int; 1e8 steps is years of training and far from INT_MAX.
constexpr double kMaxSteps = 1e8;
// A probability or a decay factor, from 0 up to but excluding 1.
constexpr Range kUnitOpen{0, 1, false, true};

struct Field {
  const char* section;
  const char* key;  // the YAML key (differs from the member name for data.template, output.export)
  FieldRef ref;
  Range range;      // numeric fields only
  // A numeric field must say which values it accepts; the others have nothing to range over.
  Field(const char* s, const char* k, int* v, Range r) : section(s), key(k), ref(v), range(r) {}
  Field(const char* s, const char* k, float* v, Range r) : section(s), key(k), ref(v), range(r) {}
  Field(const char* s, const char* k, double* v, Range r) : section(s), key(k), ref(v), range(r) {}
  template <class E, size_t N>
  Field(const char* s, const char* k, E* v, const std::array<const char*, N>& names)
      : section(s), key(k), ref(choice(v, names)) {}
  Field(const char* s, const char* k, bool* v) : section(s), key(k), ref(v) {}
  Field(const char* s, const char* k, std::string* v) : section(s), key(k), ref(v) {}
  Field(const char* s, const char* k, std::vector<std::string>* v) : section(s), key(k), ref(v) {}
  std::string path() const { return cat(section, '.', key); }
};

const char* const kSections[] = {"model", "lora", "data", "train", "dpo", "orpo", "output"};

std::vector<Field> fields_of(TrainConfig& c) {
  ModelOptions& m = c.model;
  LoraOptions& l = c.lora;
  DataOptions& d = c.data;
  TrainSection& t = c.train;
  DpoSection& dpo = c.dpo;
  OrpoSection& orpo = c.orpo;
  OutputSection& o = c.output;
  return {
      {"model", "path", &m.path},
      {"model", "preset", &m.preset},
      {"model", "quant", &m.quant, kQuantNames},
      {"model", "double_quant", &m.double_quant},
      {"model", "init_seed", &m.init_seed, kSeed},
      // A rank past 4096 is wider than the hidden size of every supported model (so no longer
      // low-rank), and the adapter and its optimizer state grow with r.
      {"lora", "r", &l.r, {1, 4096}},
      // The update scale is alpha / r; recipes stay within alpha <= 16 r. 65536 = 16 x the largest r.
      {"lora", "alpha", &l.alpha, {0, 65536, true}},
      {"lora", "dropout", &l.dropout, kUnitOpen},
      {"lora", "rslora", &l.rslora},
      {"lora", "targets", &l.targets},
      {"lora", "init_from", &l.init_from},
      {"data", "path", &d.path},
      {"data", "synthetic", &d.synthetic},
      // Generated and held in memory at once (median ~200 tokens each: ~1 GB at the bound).
      {"data", "synthetic_docs", &d.synthetic_docs, {1, 1e6}},
      {"data", "format", &d.format, kDataFormatNames},
      {"data", "tokenizer", &d.tokenizer},
      {"data", "template", &d.template_name},
      {"data", "train_on", &d.train_on, kTrainOnNames},
      {"data", "max_seq_len", &d.max_seq_len, {1, kMaxTokens}},
      {"data", "max_prompt_len", &d.max_prompt_len, {0, kMaxTokens, false, false, "0 = only data.max_seq_len limits it"}},
      {"data", "overlong", &d.overlong, kOverlongNames},
      {"data", "on_bad_line", &d.on_bad_line, kOnBadLineNames},
      {"data", "cache_dir", &d.cache_dir},
      {"data", "eval_path", &d.eval_path},
      // Documents are held in memory: 1e9 of them is past any dataset loom could load.
      {"data", "eval_split", &d.eval_split,
       {0, 1e9, false, false, "0 = none; below 1 a fraction of the documents, from 1 a count of them"}},
      {"train", "device", &t.device, kDeviceNames},
      {"train", "objective", &t.objective, kObjectiveNames},
      {"train", "token_budget", &t.token_budget, {1, kMaxTokens}},
      // Documents per step: recipes use tens to thousands; 2^20 is past any, and a typo there
      // would silently turn every step into a whole epoch.
      {"train", "global_batch", &t.global_batch, {1, 1 << 20}},
      {"train", "steps", &t.steps, {0, kMaxSteps, false, false, "0 = as many as train.epochs gives"}},
      // 1000 passes over the same data have long memorised it.
      {"train", "epochs", &t.epochs, {1, 1000}},
      // Past 1 every AdamW step moves a weight by about 1 or more: divergence, not training.
      {"train", "lr", &t.lr, {0, 1, true}},
      {"train", "schedule", &t.schedule, kScheduleNames},
      {"train", "warmup_steps", &t.warmup_steps, {0, kMaxSteps}},
      {"train", "min_lr_ratio", &t.min_lr_ratio, {0, 1}},
      // Decoupled decay multiplies weights by 1 - lr * weight_decay; with lr <= 1 this bound keeps
      // that factor >= 0 (past it the decay flips the weights' sign).
      {"train", "weight_decay", &t.weight_decay, {0, 1}},
      {"train", "beta1", &t.beta1, kUnitOpen},
      {"train", "beta2", &t.beta2, kUnitOpen},
      // An eps far above sqrt(v) turns AdamW into SGD at lr / eps; 1 is past every recipe (1e-8..1e-6).
      {"train", "eps", &t.eps, {0, 1, true}},
      // Healthy gradient norms are < 1e3; a threshold past 1e6 never clips (0 says so plainly).
      {"train", "max_grad_norm", &t.max_grad_norm, {0, 1e6, false, false, "0 disables clipping"}},
      {"train", "recompute", &t.recompute, kRecomputeNames},
      {"train", "offload", &t.offload, kOffloadNames},
      {"train", "mlp_tile", &t.mlp_tile,
       {0, kMaxTokens, false, false, "0 = auto: tiles of 16384 rows under recompute full when train.token_budget is "
                                     "larger, else none"}},
      {"train", "seed", &t.seed, kSeed},
      {"train", "log_every", &t.log_every, {1, kMaxSteps}},
      {"train", "divergence_check", &t.divergence_check},
      // The median of the window is taken every step; 1e5 steps of history is past any use.
      {"train", "divergence_window", &t.divergence_window, {1, 1e5}},
      // At 1 or below the band would end at the median itself; 1e6 leaves only the +1 nat floor.
      {"train", "divergence_factor", &t.divergence_factor, {1, 1e6, true}},
      {"train", "zero_grad_steps", &t.zero_grad_steps, {1, kMaxSteps}},
      {"train", "eval_every", &t.eval_every, {0, kMaxSteps, false, false, "0 = only at the end"}},
      {"train", "sample_every", &t.sample_every, {0, kMaxSteps, false, false, "0 = off"}},
      {"train", "sample_prompts", &t.sample_prompts},
      {"train", "sample_max_new_tokens", &t.sample_max_new_tokens, {1, 1 << 20}},
      // Counts evaluations, of which a run has at most one per step.
      {"train", "early_stopping_patience", &t.early_stopping_patience, {0, kMaxSteps, false, false, "0 = off"}},
      // β scales the log-ratio inside a sigmoid: recipes use 0.01 to 0.5; past 100 one token's
      // log-prob difference saturates the loss.
      {"dpo", "beta", &dpo.beta, {0, 100, true}},
      {"dpo", "loss_type", &dpo.loss_type, kDpoLossTypeNames},
      // At 0.5 the label is a coin flip and the loss no longer prefers either answer.
      {"dpo", "label_smoothing", &dpo.label_smoothing, {0, 0.5, false, true}},
      {"dpo", "precompute_reference", &dpo.precompute_reference, kPrecomputeReferenceNames},
      // λ weighs the odds-ratio term against the NLL: the ORPO paper uses 0.1 to 1; 100 leaves no NLL.
      {"orpo", "lambda", &orpo.lambda, {0, 100, true}},
      {"output", "dir", &o.dir},
      {"output", "checkpoint_every", &o.checkpoint_every,
       {0, kMaxSteps, false, false, "0 = only the final checkpoint"}},
      // Each checkpoint holds the adapter and its optimizer state (3x the adapter) on disk.
      {"output", "keep_checkpoints", &o.keep_checkpoints, {1, 1000}},
      {"output", "export", &o.export_format, kExportFormatNames},
      {"output", "gguf_type", &o.gguf_type, kGgufTypeNames},
      {"output", "resume", &o.resume},
      {"output", "on_change", &o.on_change, kOnChangeNames},
      {"output", "keep_best", &o.keep_best},
  };
}

// Keys a resumed run may change without output.on_change=accept, because the weights it trains do
// not depend on them: how often it logs, saves, checks for divergence and what it exports; where
// the data cache lives (the shards' content is checked on their own); the device, recompute, offload and
// mlp_tile (the same arithmetic, in another place or order: a run moved between CPU and GPU resumes), and
// data.on_bad_line (a run that went through under "error" read no bad line, so "skip" reads the
// same data; the other way round errors on the line). Evaluation only watches: data.eval_path,
// train.eval_every and output.keep_best change what is measured and kept, never the weights of a
// step. data.eval_split is not among them (it takes documents out of training), nor is
// train.early_stopping_patience (like train.steps, it decides how long the run trains). Every other
// key changes what is trained.
const std::set<std::string> kKeysThatDoNotChangeTraining = {
    "data.cache_dir",          "data.on_bad_line",        "data.eval_path",          "train.device",
    "train.recompute",         "train.offload",           "train.mlp_tile",          "train.log_every",
    "train.divergence_check",  "train.divergence_window", "train.divergence_factor", "train.zero_grad_steps",
    "train.eval_every",        "output.dir",
    "train.sample_every",      "train.sample_prompts",    "train.sample_max_new_tokens",
    "output.checkpoint_every", "output.keep_checkpoints", "output.export",           "output.gguf_type",
    "output.resume",           "output.on_change",        "output.keep_best",        "dpo.precompute_reference",
};

// ---------------------------------------------------------------------------------------------
// Suggestions

// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of neighbours
// ("lroa" -> "lora") each cost 1.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// The closest candidate, or "" when none is close. Close: edits touch under a third of the word
// (so "gpu" does not suggest "cpu"), or one is a prefix of the other ("warmup" -> "warmup_steps",
// "rank" -> "r").
std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  // No key or value is this long, and the distance table costs word length x candidate length.
  constexpr size_t kLongestWord = 64;
  if (word.size() > kLongestWord) return "";
  std::string best;
  size_t best_distance = SIZE_MAX;
  for (const std::string& c : candidates) {
    size_t d = edit_distance(word, c);
    bool prefix = !c.empty() && (starts_with(word, c) || (word.size() >= 3 && starts_with(c, word)));
    bool near = 3 * d < word.size();
    if ((near || prefix) && d < best_distance) {
      best = c;
      best_distance = d;
    }
  }
  return best;
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

// ---------------------------------------------------------------------------------------------
// Scalars <-> text

// Shortest decimal that reads back as the same float, so to_yaml round-trips and stays readable.
std::string format_float(float v) {
  char buf[32];
  for (int precision = 1; precision <= 9; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, double(v));
    if (std::strtof(buf, nullptr) == v) break;
  }
  return buf;
}

// The same for a double.
std::string format_double(double v) {
  char buf[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// An integer as written, before its range is checked. Past the long long range strtoll clamps to
// LLONG_MIN/MAX, which no range contains, so the range check refuses it.
bool parse_integer(const std::string& s, long long* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  *out = std::strtoll(s.c_str(), &end, 10);
  return *end == '\0';
}

// A float or double as written. Overflow gives +-inf (1e39 for a float) and underflow 0 or a
// denormal (1e-50): the range check then refuses them, quoting the text. YAML's own spellings of
// inf and NaN are read too, so that `lr: .inf` is told its range rather than that it is not a number.
template <class Real>
bool parse_real(const std::string& s, Real* out) {
  if (s.empty()) return false;
  static const std::vector<std::string> inf = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"};
  static const std::vector<std::string> nan = {".nan", ".NaN", ".NAN"};
  if (std::find(inf.begin(), inf.end(), s) != inf.end()) return *out = INFINITY, true;
  if (s == "-.inf" || s == "-.Inf" || s == "-.INF") return *out = -INFINITY, true;
  if (std::find(nan.begin(), nan.end(), s) != nan.end()) return *out = NAN, true;
  char* end = nullptr;
  if constexpr (std::is_same_v<Real, float>) {
    *out = std::strtof(s.c_str(), &end);
  } else {
    *out = std::strtod(s.c_str(), &end);
  }
  return *end == '\0';
}

bool parse_bool(const std::string& s, bool* out) {
  // YAML 1.1 booleans, as yaml-cpp's own as<bool>() reads them.
  static const std::vector<std::string> truthy = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
  static const std::vector<std::string> falsy = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
  bool is_true = std::find(truthy.begin(), truthy.end(), s) != truthy.end();
  bool is_false = std::find(falsy.begin(), falsy.end(), s) != falsy.end();
  if (is_true || is_false) *out = is_true;
  return is_true || is_false;
}

// A string that yaml-cpp reads back unchanged when written bare; everything else is double-quoted.
bool plain_safe(const std::string& s) {
  if (s.empty() || s == "null" || s == "Null" || s == "NULL" || s == "~" || s[0] == '-') return false;
  for (char ch : s)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '/' ||
          ch == '-' || ch == '+'))
      return false;
  return true;
}

std::string yaml_string(const std::string& s) {
  if (plain_safe(s)) return s;
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += char(ch);
    } else if (ch < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\x%02x", ch);
      out += esc;
    } else {
      out += char(ch);
    }
  }
  return out + "\"";
}

// "[1, 4096]", "(0, 1]"; the note after it in parentheses.
std::string Range::text() const {
  char bounds[64];
  std::snprintf(bounds, sizeof bounds, "%c%.10g, %.10g%c", lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
  return cat("in ", bounds, *note ? cat(" (", note, ")") : "");
}

// A field's value as the YAML text to_yaml writes.
struct YamlText {
  std::string operator()(const int* v) const { return std::to_string(*v); }
  std::string operator()(const float* v) const { return format_float(*v); }
  std::string operator()(const double* v) const { return format_double(*v); }
  std::string operator()(const bool* v) const { return *v ? "true" : "false"; }
  std::string operator()(const std::string* v) const { return yaml_string(*v); }
  std::string operator()(const std::vector<std::string>* v) const {
    std::vector<std::string> items;
    for (const std::string& s : *v) items.push_back(yaml_string(s));
    return '[' + join(items, ", ") + ']';
  }
  std::string operator()(const Choice& c) const { return c.name(); }
};

std::string yaml_value(const Field& f) { return std::visit(YamlText{}, f.ref); }

// What a node holds, for "found ..." in messages.
std::string describe(const YAML::Node& n) {
  if (n.IsScalar()) return cat('\'', shown(n.Scalar()), '\'');
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "nothing";
}

// ---------------------------------------------------------------------------------------------
// Reading nodes into fields

// Collects problems; `where` is the location prefix of the next ones ("cfg.yaml:7" or
// "command line: lora.r=8"). Keeps the first kMaxShown and counts the rest: a file of 50,000
// unknown keys gives a message to read, not 50,000 lines.
struct Problems {
  static constexpr size_t kMaxShown = 20;
  std::vector<std::string> lines;
  size_t total = 0;
  // A choice key's value that names no choice, by key, as written. It is reported with the rules
  // checked once the whole config is read (a later override may still replace it), so its message
  // names the file rather than a line, wherever the value came from.
  std::map<std::string, std::string> unmatched_choices;
  void add_line(std::string line) {
    if (++total <= kMaxShown) lines.push_back(std::move(line));
  }
  void add(const std::string& where, const std::string& what) { add_line(cat(where, ": ", what)); }
};

// Reads `value` into the field; returns "" or the whole problem: "lora.r: expected an integer,
// found 'x'" or "lora.r must be in [1, 4096] (found 5000)". A value out of range is not stored,
// so validate() does not report it a second time.
struct Assign {
  const Field& field;
  const YAML::Node& value;
  std::map<std::string, std::string>& unmatched_choices;

  std::string expected(const char* what) const { return cat(field.path(), ": expected ", what, ", found ", describe(value)); }
  std::string out_of_range() const {
    return cat(field.path(), " must be ", field.range.text(), " (found ", shown(value.Scalar()), ")");
  }

  std::string operator()(int* out) const {
    long long v = 0;
    if (!value.IsScalar() || !parse_integer(value.Scalar(), &v)) return expected("an integer");
    if (!field.range.contains(double(v))) return out_of_range();
    *out = int(v);  // every int field's range lies within int
    return "";
  }
  std::string operator()(float* out) const {
    float v = 0;
    if (!value.IsScalar() || !parse_real(value.Scalar(), &v)) return expected("a number");
    if (!field.range.contains(v)) return out_of_range();
    *out = v;
    return "";
  }
  std::string operator()(double* out) const {
    double v = 0;
    if (!value.IsScalar() || !parse_real(value.Scalar(), &v)) return expected("a number");
    if (!field.range.contains(v)) return out_of_range();
    *out = v;
    return "";
  }
  std::string operator()(bool* out) const {
    if (value.IsScalar() && parse_bool(value.Scalar(), out)) return "";
    return expected("true or false");
  }
  std::string operator()(std::string* out) const {
    // `key:` with nothing after it reads as "" (not set), as the empty defaults do.
    if (value.IsNull()) {
      out->clear();
    } else if (value.IsScalar()) {
      *out = value.Scalar();
    } else {
      return expected("a string");
    }
    return "";
  }
  std::string operator()(std::vector<std::string>* out) const {
    if (value.IsMap()) return expected("a list of strings");
    std::vector<std::string> items;
    if (value.IsScalar()) items.push_back(value.Scalar());  // one name is a one-item list: `targets: all-linear`
    for (size_t i = 0; value.IsSequence() && i < value.size(); ++i) {
      if (!value[i].IsScalar())
        return cat(field.path(), ": expected a list of strings, found ", describe(value[i]), " as item ", i + 1);
      items.push_back(value[i].Scalar());
    }
    *out = std::move(items);
    return "";
  }
  std::string operator()(const Choice& out) const {
    if (!value.IsNull() && !value.IsScalar()) return expected("a string");
    const std::string text = value.IsNull() ? "" : value.Scalar();  // `key:` names no choice
    for (size_t i = 0; i < out.count; ++i) {
      if (text != out.names[i]) continue;
      out.set(out.member, i);
      unmatched_choices.erase(field.path());
      return "";
    }
    unmatched_choices[field.path()] = text;
    return "";
  }
};

// yaml-cpp reads a quoted value whose closing quote is missing on to the end of the file, silently
// swallowing the keys after it (`dir: "runs/x` then `export: none` gives dir 'runs/x export: none ').
// True when the scalar `node` starts with a quote, at its position in `text`, that nothing closes.
bool quote_left_open(const std::string& text, const YAML::Node& node) {
  if (!node.IsScalar() || node.Mark().pos < 0) return false;
  // yaml-cpp counts bytes from after a UTF-8 byte-order mark.
  const size_t bom = text.compare(0, 3, "\xef\xbb\xbf") == 0 ? 3 : 0;
  const size_t pos = size_t(node.Mark().pos) + bom;
  if (pos >= text.size()) return false;
  const char quote = text[pos];
  if (quote != '"' && quote != '\'') return false;
  for (size_t i = pos + 1; i < text.size(); ++i) {
    if (quote == '"' && text[i] == '\\') {
      ++i;  // the escaped character cannot close the string
    } else if (text[i] == quote) {
      if (quote == '"' || i + 1 == text.size() || text[i + 1] != '\'') return false;
      ++i;  // '' inside single quotes is one quote
    }
  }
  return true;
}

bool any_quote_left_open(const std::string& text, const YAML::Node& value) {
  if (!value.IsSequence()) return quote_left_open(text, value);
  for (const auto& item : value)  // items only: nested lists are refused anyway, and may be cycles (&a [*a])
    if (quote_left_open(text, item)) return true;
  return false;
}

std::vector<std::string> keys_of_section(const std::vector<Field>& fields, const std::string& section) {
  std::vector<std::string> keys;
  for (const Field& f : fields)
    if (section == f.section) keys.push_back(f.key);
  return keys;
}

// "unknown key 'lora.rank'; did you mean 'lora.r'?" A key that exists verbatim in another section
// is suggested first (lora.lr -> train.lr), then the nearest key of the same section, else the
// section's keys are listed.
std::string unknown_key_message(const std::vector<Field>& fields, const std::string& section,
                                const std::string& key) {
  std::string head = cat("unknown key '", section, '.', shown(key), "'");
  for (const Field& f : fields)
    if (key == f.key) return cat(head, "; did you mean '", f.path(), "'?");
  std::vector<std::string> keys = keys_of_section(fields, section);
  std::string near = closest(key, keys);
  if (!near.empty()) return cat(head, "; did you mean '", section, '.', near, "'?");
  return cat(head, "; ", section, " has: ", join(keys, ", "));
}

std::string unknown_section_message(const std::string& section) {
  std::vector<std::string> sections(std::begin(kSections), std::end(kSections));
  std::string near = closest(section, sections);
  if (!near.empty()) return cat("unknown section '", shown(section), "'; did you mean '", near, "'?");
  return cat("unknown section '", shown(section), "'; sections are: ", join(sections, ", "));
}

bool is_section(const std::string& s) {
  return std::find(std::begin(kSections), std::end(kSections), s) != std::end(kSections);
}

// Sets section.key from `value`, parsed from `text`; problems are reported at `where`.
void set_field(std::vector<Field>& fields, const std::string& section, const std::string& key,
               const YAML::Node& value, const std::string& text, const std::string& where, Problems& problems) {
  if (!is_section(section)) return problems.add(where, unknown_section_message(section));
  for (Field& f : fields) {
    if (section != f.section || key != f.key) continue;
    if (any_quote_left_open(text, value))
      return problems.add(where, cat(f.path(), ": a quote opened in the value is never closed (the rest of the "
                                               "file would be read into it); close the quote"));
    std::string error = std::visit(Assign{f, value, problems.unmatched_choices}, f.ref);
    if (!error.empty()) problems.add(where, error);
    return;
  }
  problems.add(where, unknown_key_message(fields, section, key));
}

std::string line_of(const std::string& source, const YAML::Node& n) {
  return cat(source, ':', n.Mark().line + 1);
}

// A key that is not a name: `? [a, b]` (a list as a key) or `{a: 1}: x`.
bool odd_key(const YAML::Node& key, const std::string& where, Problems& problems) {
  if (key.IsScalar()) return false;
  problems.add(where, cat("keys are names such as lora or r; found ", describe(key), " as a key"));
  return true;
}

struct Document {
  const std::string& text;    // the YAML, for quote positions
  const std::string& source;  // the file, for messages
};

void read_section(std::vector<Field>& fields, const std::string& section, const YAML::Node& body,
                  const Document& doc, Problems& problems) {
  std::map<std::string, int> first_line;  // yaml-cpp keeps duplicate keys silently
  for (const auto& entry : body) {
    std::string where = line_of(doc.source, entry.first);
    if (odd_key(entry.first, where, problems)) continue;
    const std::string& key = entry.first.Scalar();
    const int line = entry.first.Mark().line + 1;
    auto [first, fresh] = first_line.emplace(key, line);
    if (!fresh) {
      problems.add(where, cat("duplicate key '", section, '.', shown(key), "' (first set on line ", first->second,
                              "); keep one"));
      continue;
    }
    set_field(fields, section, key, entry.second, doc.text, where, problems);
  }
}

void read_document(TrainConfig& cfg, const YAML::Node& root, const Document& doc, Problems& problems) {
  std::vector<Field> fields = fields_of(cfg);
  std::set<std::string> seen;
  for (const auto& entry : root) {
    std::string where = line_of(doc.source, entry.first);
    if (odd_key(entry.first, where, problems)) continue;
    const std::string& section = entry.first.Scalar();
    if (!is_section(section)) {
      problems.add(where, unknown_section_message(section));
    } else if (!seen.insert(section).second) {
      problems.add(where, cat("duplicate section '", section, "'; merge its keys into the first one"));
    } else if (!entry.second.IsNull() && !entry.second.IsMap()) {
      problems.add(where, cat(section, ": expected a mapping of keys, found ", describe(entry.second)));
    } else {
      read_section(fields, section, entry.second, doc, problems);
    }
  }
}

// Where text stops being UTF-8 text (a NUL byte or a byte that is not UTF-8), or npos. A binary
// file, or one in another encoding, would otherwise reach the YAML parser and come out as keys.
size_t first_non_text(const std::string& text) { return std::min(text.find('\0'), utf8::first_invalid(text)); }

// "a NUL byte" or "byte 0xff, which is not UTF-8".
std::string non_text_byte(const std::string& text, size_t at) {
  if (text[at] == '\0') return "a NUL byte";
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02x", unsigned(static_cast<unsigned char>(text[at])));
  return cat("byte ", hex, ", which is not UTF-8");
}

// "line:column" (1-based) of a byte offset.
std::string line_column(const std::string& text, size_t at) {
  const auto lines_before = std::count(text.begin(), text.begin() + ptrdiff_t(at), '\n');
  const size_t newline = at == 0 ? std::string::npos : text.rfind('\n', at - 1);
  return cat(lines_before + 1, ':', at - (newline == std::string::npos ? 0 : newline + 1) + 1);
}

// One YAML document parsed from text. yaml-cpp's Load keeps only the first document, so a config
// split by '---' would lose its second half silently: a second document is a problem here.
struct Parsed {
  YAML::Node root;
  std::string problem;       // "" when parsed
  int line = 0, column = 0;  // 1-based position of the problem; 0 when not known
};

// The line of the '---' (or '...') that ends the first document: the last marker at or before
// the start of the second one (1-based), or 0 when there is none.
int document_marker_line(const std::string& text, int second_start_line) {
  int line = 0, marker = 0;
  for (size_t pos = 0; pos < text.size() && line <= second_start_line; ++line) {
    if (text.compare(pos, 3, "---") == 0 || text.compare(pos, 3, "...") == 0) marker = line + 1;
    const size_t nl = text.find('\n', pos);
    pos = nl == std::string::npos ? text.size() : nl + 1;
  }
  return marker;
}

// Where each document of a YAML stream starts, for at most `limit` documents. yaml-cpp's LoadAll
// loops forever on a stray flow token (the text ",": every turn yields another empty document
// without consuming it), so documents are counted through the parser with a bound instead.
struct DocumentStarts : YAML::EventHandler {
  std::vector<YAML::Mark> marks;
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

std::vector<YAML::Mark> document_starts(const std::string& text, size_t limit) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts starts;
  while (starts.marks.size() < limit && parser.HandleNextDocument(starts)) {}
  return starts.marks;
}

Parsed parse_one_document(const std::string& text) {
  YAML::Node root;
  std::vector<YAML::Mark> starts;
  try {
    root = YAML::Load(text);
    starts = document_starts(text, 3);
  } catch (const YAML::DeepRecursion& e) {
    // yaml-cpp's parser recurses once per level and stops itself (DepthGuard) before the stack does.
    return {{}, "invalid YAML: nested too deep; a config nests at most 3 levels (section, key, list)",
            e.mark.line + 1, e.mark.column + 1};
  } catch (const YAML::Exception& e) {
    return {{}, cat("invalid YAML: ", e.msg), e.mark.line + 1, e.mark.column + 1};
  }
  for (size_t i = 1; i < starts.size(); ++i)
    if (starts[i].pos == starts[i - 1].pos)  // the parser is stuck on a token it cannot use
      return {{}, "invalid YAML: unexpected text here (a stray ',' or flow token?)", starts[i].line + 1,
              starts[i].column + 1};
  if (starts.size() > 1)
    return {{}, "a second YAML document starts here; a config is one document: remove the '---' line and "
                "merge what follows it into the first",
            document_marker_line(text, starts[1].line), 0};
  return {root, "", 0, 0};
}

void apply_override(TrainConfig& cfg, const std::string& text, Problems& problems) {
  std::string where = cat("command line: ", shown(text));
  size_t eq = text.find('=');
  size_t dot = text.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq || dot == 0 || dot + 1 == eq)
    return problems.add(where, "expected section.key=value (e.g. lora.r=8 or lora.targets=[q_proj,v_proj])");
  const std::string value_text = text.substr(eq + 1);
  if (const size_t bad = first_non_text(value_text); bad != std::string::npos)
    return problems.add(where, cat("the value holds ", non_text_byte(value_text, bad)));
  const Parsed value = parse_one_document(value_text);
  if (!value.problem.empty()) return problems.add(where, value.problem);
  std::vector<Field> fields = fields_of(cfg);
  set_field(fields, text.substr(0, dot), text.substr(dot + 1, eq - dot - 1), value.root, value_text, where, problems);
}

// ---------------------------------------------------------------------------------------------
// Validation

// Adds "source: what" lines; the helpers phrase each rule the same way everywhere.
struct Checker {
  std::string source;
  const std::map<std::string, std::string>& unmatched_choices;  // Problems::unmatched_choices
  std::vector<std::string> lines;

  void add(const std::string& what) { lines.push_back(cat(source, ": ", what)); }

  // A numeric field within its range (values read from YAML were checked as they were read; this
  // catches configs built in code), a choice key that was given a name it does not have. No text
  // holds a NUL ("\0" in YAML): a path would be cut short at it by the first system call.
  void field(const Field& f) {
    if (const int* const* i = std::get_if<int*>(&f.ref); i && !f.range.contains(**i))
      add(cat(f.path(), " must be ", f.range.text(), " (found ", **i, ")"));
    if (const float* const* x = std::get_if<float*>(&f.ref); x && !f.range.contains(**x))
      add(cat(f.path(), " must be ", f.range.text(), " (found ", format_float(**x), ")"));
    if (const double* const* x = std::get_if<double*>(&f.ref); x && !f.range.contains(**x))
      add(cat(f.path(), " must be ", f.range.text(), " (found ", format_double(**x), ")"));
    if (const Choice* c = std::get_if<Choice>(&f.ref))
      if (const auto it = unmatched_choices.find(f.path()); it != unmatched_choices.end())
        one_of(f.path(), it->second, c->allowed());
    std::vector<std::string> texts;
    if (const std::string* const* v = std::get_if<std::string*>(&f.ref)) texts = {**v};
    if (const std::vector<std::string>* const* v = std::get_if<std::vector<std::string>*>(&f.ref)) texts = **v;
    for (const std::string& t : texts)
      if (t.find('\0') != std::string::npos) return add(cat(f.path(), " must not contain a NUL character (\\0)"));
  }

  void one_of(const std::string& key, const std::string& value, const std::vector<std::string>& allowed) {
    if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return;
    std::string near = closest(value, allowed);
    add(cat(key, " must be one of ", join(allowed, ", "), " (found '", shown(value), "'",
            near.empty() ? "" : cat("; did you mean '", near, "'?"), ")"));
  }

  // Exactly one of two alternatives, e.g. model.path (an HF folder) or model.preset.
  void exactly_one(const char* a, const std::string& va, const char* b, const std::string& vb,
                   const char* hint) {
    if (va.empty() == vb.empty())
      add(cat("set exactly one of ", a, " or ", b, " (", hint, "); found ",
              va.empty() ? "neither" : cat("both: ", a, " = '", shown(va), "', ", b, " = '", shown(vb), "'")));
  }
};

const std::vector<std::string> kLoraTargets = {"q_proj", "k_proj", "v_proj", "o_proj",
                                               "gate_proj", "up_proj", "down_proj"};

void check_targets(Checker& c, const std::vector<std::string>& targets) {
  if (targets.empty())
    return c.add(cat("lora.targets must list at least one of ", join(kLoraTargets, ", "),
                     ", or be [all-linear] (found an empty list)"));
  if (targets.size() == 1 && targets[0] == "all-linear") return;
  if (targets.size() > kLoraTargets.size())
    return c.add(cat("lora.targets lists ", targets.size(), " names, but there are ", kLoraTargets.size(),
                     " projections (", join(kLoraTargets, ", "), "); list each at most once"));
  for (size_t i = 0; i < targets.size(); ++i) {
    const std::string& t = targets[i];
    if (t == "all-linear") {
      c.add("lora.targets: all-linear means every projection; use it alone, as [all-linear]");
    } else if (std::find(kLoraTargets.begin(), kLoraTargets.end(), t) == kLoraTargets.end()) {
      std::string near = closest(t, kLoraTargets);
      c.add(cat("lora.targets: '", shown(t), "' is not a projection; use ", join(kLoraTargets, ", "),
                " or all-linear", near.empty() ? "" : cat(" (did you mean '", near, "'?)")));
    } else if (std::find(targets.begin(), targets.begin() + i, t) != targets.begin() + i) {
      c.add(cat("lora.targets lists '", t, "' twice; keep one"));
    }
  }
}

void check_model(Checker& c, const ModelOptions& m) {
  c.exactly_one("model.path", m.path, "model.preset", m.preset,
                "an HF folder, or a preset with random weights such as tiny");
}

void check_lora(Checker& c, const LoraOptions& l) {
  check_targets(c, l.targets);
}

void check_data(Checker& c, const DataOptions& d, const TrainSection& t) {
  c.exactly_one("data.path", d.path, "data.synthetic", d.synthetic,
                "a JSONL file or prepared folder, or the synthetic workload sft-alpaca");
  if (!d.synthetic.empty()) c.one_of("data.synthetic", d.synthetic, {"sft-alpaca"});
  std::vector<std::string> templates = {"auto"};  // the same names build/prepare --template takes
  for (const std::string& name : chat_template_names()) templates.push_back(name);
  templates.push_back("none");
  c.one_of("data.template", d.template_name, templates);
  if (d.max_seq_len > t.token_budget && t.token_budget > 0)
    c.add(cat("data.max_seq_len (", d.max_seq_len, ") must be <= train.token_budget (", t.token_budget,
              ") so that every sequence fits in one micro-batch; lower data.max_seq_len or raise "
              "train.token_budget"));
}

// Held-out data comes from a file or from the training data, and the keys that act on the eval
// loss need one of them.
void check_eval(Checker& c, const TrainConfig& cfg) {
  const DataOptions& d = cfg.data;
  if (!d.eval_path.empty() && d.eval_split != 0)
    c.add(cat("set at most one of data.eval_path or data.eval_split (held-out documents come from a file or from "
              "the training data); found both: data.eval_path = '", shown(d.eval_path), "', data.eval_split = ",
              format_double(d.eval_split)));
  if (d.eval_split >= 1 && d.eval_split != std::floor(d.eval_split))
    c.add(cat("data.eval_split must be a fraction in (0, 1) or a whole count of documents (found ",
              format_double(d.eval_split), ")"));
  if (!d.eval_path.empty() || d.eval_split != 0) return;
  std::vector<std::string> watching;
  if (cfg.train.eval_every > 0) watching.push_back(cat("train.eval_every = ", cfg.train.eval_every));
  if (cfg.train.early_stopping_patience > 0)
    watching.push_back(cat("train.early_stopping_patience = ", cfg.train.early_stopping_patience));
  if (cfg.output.keep_best) watching.push_back("output.keep_best = true");
  if (!watching.empty())
    c.add(cat(join(watching, ", "), watching.size() == 1 ? " needs" : " need",
              " eval data: set data.eval_path (a JSONL file or a folder of prepared shards held out for evaluation) "
              "or data.eval_split (a fraction or a count of the training documents to hold out)"));
}

// Offloading keeps what recompute full keeps (each layer's input) in host memory; the other policies
// keep more than that, on the device.
void check_offload(Checker& c, const TrainSection& t) {
  if (t.offload == Offload::kActivations && t.recompute != Recompute::kFull)
    c.add(cat("train.offload: activations moves each layer's input to host memory, which is what recompute full "
              "keeps; set train.recompute: full (found ", recompute_name(t.recompute), ") or train.offload: none"));
}

// The MLP's tiles are whole pieces of its row-invariant sums (models/cuda_model.h kMlpRowChunk) and
// exist only where recompute full rebuilds the MLP in backward.
void check_mlp_tile(Checker& c, const TrainSection& t) {
  if (t.mlp_tile == 0) return;
  if (t.mlp_tile % kMlpRowChunk != 0)
    c.add(cat("train.mlp_tile (", t.mlp_tile, ") must be a multiple of ", kMlpRowChunk, " rows, or 0 (auto); try ",
              std::max(kMlpRowChunk, t.mlp_tile / kMlpRowChunk * kMlpRowChunk)));
  if (t.recompute != Recompute::kFull)
    c.add(cat("train.mlp_tile ", t.mlp_tile, " needs train.recompute: full (found ", recompute_name(t.recompute),
              "): the other policies keep every layer's MLP activations whole; set it to 0 or recompute to full"));
}

// Samples need prompts.
void check_samples(Checker& c, const TrainConfig& cfg) {
  const TrainSection& t = cfg.train;
  if (t.sample_every > 0 && t.sample_prompts.empty())
    c.add(cat("train.sample_every = ", t.sample_every, " needs train.sample_prompts: a list of prompt texts, or a "
              ".jsonl file of build/generate's input lines"));
}

// A preference objective trains on pairs: the data must be (or may be detected as) pairs, a
// micro-batch must hold a whole pair, and label smoothing exists only for the losses that take it.
void check_objective(Checker& c, const TrainConfig& cfg) {
  const ObjectiveKind objective = cfg.train.objective;
  const DpoSection& dpo = cfg.dpo;
  if ((dpo.loss_type == DpoLossType::kIpo || dpo.loss_type == DpoLossType::kHinge) && dpo.label_smoothing != 0)
    c.add(cat("dpo.label_smoothing (", format_double(dpo.label_smoothing), ") applies to dpo.loss_type sigmoid and ",
              "robust only, not ", dpo_loss_type_name(dpo.loss_type), "; set it to 0 or change dpo.loss_type"));
  if (objective == ObjectiveKind::kSft) return;
  const DataFormat format = cfg.data.format;
  if (format != DataFormat::kPairs && format != DataFormat::kAuto)
    c.add(cat("train.objective ", objective_name(objective), " trains on preference pairs: data.format must be pairs ",
              "(or auto), found ", data_format_name(format)));
  const int64_t pair = 2 * int64_t(cfg.data.max_seq_len);
  if (pair > cfg.train.token_budget && cfg.train.token_budget > 0)
    c.add(cat("train.objective ", objective_name(objective), ": a pair holds two sequences of up to data.max_seq_len (",
              cfg.data.max_seq_len, ") tokens in one micro-batch, so train.token_budget (", cfg.train.token_budget,
              ") must be >= ", pair, "; raise train.token_budget or lower data.max_seq_len"));
}

void check_output(Checker& c, const OutputSection& o) {
  if (o.dir.empty()) c.add("output.dir must name the run folder (found an empty string)");
  if (o.resume.empty()) c.add("output.resume must be auto, last_intact, never or a checkpoint folder (found '')");
}

// A folder that must exist already (model.path, a checkpoint to resume).
void require_folder(const std::string& path, const std::string& key, const char* expected) {
  std::error_code ec;
  LOOM_CHECK(fs::is_directory(path, ec), key, ": '", shown(path), "' is not a folder (expected ", expected, ")");
}

// validate(), with the choice values that named no choice while the config was read.
std::vector<std::string> problems_of(const TrainConfig& cfg,
                                     const std::map<std::string, std::string>& unmatched_choices) {
  Checker c{cfg.source.empty() ? "config" : cfg.source, unmatched_choices, {}};
  TrainConfig copy = cfg;
  for (const Field& f : fields_of(copy)) c.field(f);
  check_model(c, cfg.model);
  check_lora(c, cfg.lora);
  check_data(c, cfg.data, cfg.train);
  check_eval(c, cfg);
  check_samples(c, cfg);
  check_offload(c, cfg.train);
  check_mlp_tile(c, cfg.train);
  check_objective(c, cfg);
  check_output(c, cfg.output);
  return c.lines;
}

}  // namespace

std::vector<std::string> validate(const TrainConfig& cfg) { return problems_of(cfg, {}); }

TrainConfig parse_config(const std::string& yaml_text, const std::string& source,
                         const std::vector<std::string>& overrides) {
  LOOM_CHECK(yaml_text.size() <= kMaxConfigBytes, source, " is ", yaml_text.size(), " bytes; a config is at most ",
             kMaxConfigBytes, " (is this the right file?)");
  if (const size_t bad = first_non_text(yaml_text); bad != std::string::npos)
    fail(source, ':', line_column(yaml_text, bad), ": ", non_text_byte(yaml_text, bad),
         "; a config is YAML text (is this the right file?)");
  const Parsed doc = parse_one_document(yaml_text);
  if (!doc.problem.empty())
    fail(source, ':', doc.line, doc.column ? cat(':', doc.column) : "", ": ", doc.problem);
  if (!doc.root.IsNull() && !doc.root.IsMap())
    fail(line_of(source, doc.root), ": expected a mapping of sections (model, lora, data, train, dpo, orpo, output), found ",
         describe(doc.root));
  TrainConfig cfg;
  cfg.source = source;
  Problems problems;
  read_document(cfg, doc.root, Document{yaml_text, source}, problems);
  for (const std::string& o : overrides) apply_override(cfg, o, problems);
  for (std::string& line : problems_of(cfg, problems.unmatched_choices)) problems.add_line(std::move(line));

  if (problems.total == 1) fail(problems.lines[0]);
  if (problems.total > 1)
    fail(problems.total, " problems in ", source, ":\n  ", join(problems.lines, "\n  "),
         problems.total > problems.lines.size() ? cat("\n  ... and ", problems.total - problems.lines.size(), " more")
                                                : "");
  return cfg;
}

TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_config(read_regular_file(path, "config", kMaxConfigBytes), path, overrides);
}

std::string data_cache_dir(const TrainConfig& cfg) {
  return cfg.data.cache_dir.empty() ? cfg.output.dir + "/data" : cfg.data.cache_dir;
}

void check_data_paths(const TrainConfig& cfg) {
  const DataOptions& d = cfg.data;
  bool jsonl = false;  // a JSONL file is prepared into the cache with the tokenizer
  const std::pair<const std::string&, const char*> sources[] = {{d.path, "data.path"}, {d.eval_path, "data.eval_path"}};
  for (const auto& [path, key] : sources) {
    if (path.empty()) continue;  // synthetic data; no eval file
    require_file_or_folder(path, key);
    std::error_code ec;
    jsonl = jsonl || !fs::is_directory(path, ec);  // prepared shards need no tokenizer or cache
  }
  if (!jsonl) return;
  require_folder_or_creatable(data_cache_dir(cfg),
                              d.cache_dir.empty() ? "data.cache_dir (default <output.dir>/data)" : "data.cache_dir");
  if (!d.tokenizer.empty()) require_file_or_folder(d.tokenizer, "data.tokenizer");
}

void check_paths(const TrainConfig& cfg) {
  require_folder_or_creatable(cfg.output.dir, "output.dir");
  check_data_paths(cfg);
  if (!cfg.model.path.empty()) {
    require_folder(cfg.model.path, "model.path", "an HF model folder with config.json and *.safetensors");
    require_regular_file(cfg.model.path + "/config.json", "model.path: config");
  }
  if (!cfg.lora.init_from.empty()) {
    require_folder(cfg.lora.init_from, "lora.init_from",
                   "a PEFT adapter folder with adapter_config.json and adapter_model.safetensors");
    require_regular_file(cfg.lora.init_from + "/adapter_config.json", "lora.init_from: adapter config");
  }
  const std::string& resume = cfg.output.resume;
  if (resume != "auto" && resume != "never" && resume != "last_intact")
    require_folder(resume, "output.resume", "auto, last_intact, never or a checkpoint folder such as <run>/checkpoints/step-N");
}

std::string to_yaml(const TrainConfig& cfg) {
  TrainConfig copy = cfg;
  std::vector<Field> fields = fields_of(copy);
  std::ostringstream out;
  std::string section;
  for (const Field& f : fields) {
    if (section != f.section) {
      out << (section.empty() ? "" : "\n") << f.section << ":\n";
      section = f.section;
    }
    out << "  " << f.key << ": " << yaml_value(f) << '\n';
  }
  return out.str();
}

std::vector<ConfigChange> training_changes(const TrainConfig& recorded, const TrainConfig& now) {
  TrainConfig a = recorded, b = now;
  const std::vector<Field> before = fields_of(a), after = fields_of(b);
  std::vector<ConfigChange> changes;
  for (size_t i = 0; i < before.size(); ++i) {
    if (kKeysThatDoNotChangeTraining.count(before[i].path())) continue;
    const std::string x = yaml_value(before[i]), y = yaml_value(after[i]);
    if (x != y) changes.push_back({before[i].path(), x, y});
  }
  return changes;
}

}  // namespace loom
