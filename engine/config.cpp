// YAML experiment config -> TrainConfig.
//
// Format: five optional top-level mappings, each key a field of the matching struct in config.h:
//
//   model:  {path, preset, quant, double_quant, init_seed}
//   lora:   {r, alpha, dropout, rslora, targets}
//   data:   {path, synthetic, synthetic_docs, format, tokenizer, template, train_on, max_seq_len,
//            overlong, on_bad_line, cache_dir}
//   train:  {device, token_budget, global_batch, steps, epochs, lr, schedule, warmup_steps,
//            min_lr_ratio, weight_decay, beta1, beta2, eps, max_grad_norm, recompute, seed, log_every}
//   output: {dir, checkpoint_every, keep_checkpoints, export, resume}
//
// A missing key keeps the member initialiser of config.h. Overrides "section.key=value" are applied
// after the file, the value read as one YAML node (scalar or flow sequence). One table (fields_of)
// maps every YAML key to its member; reading, overriding, writing and key suggestions all use it.
// Problems are collected, not thrown one at a time: a run fails once, listing everything to fix.
#include "engine/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <type_traits>
#include <variant>

#include "ops/error.h"

namespace loom {
namespace {

// ---------------------------------------------------------------------------------------------
// The field table

using FieldRef = std::variant<int*, float*, bool*, std::string*, std::vector<std::string>*>;

struct Field {
  const char* section;
  const char* key;  // the YAML key (differs from the member name for data.template, output.export)
  FieldRef ref;
  std::string path() const { return cat(section, '.', key); }
};

const char* const kSections[] = {"model", "lora", "data", "train", "output"};

std::vector<Field> fields_of(TrainConfig& c) {
  ModelSection& m = c.model;
  LoraSection& l = c.lora;
  DataSection& d = c.data;
  TrainSection& t = c.train;
  OutputSection& o = c.output;
  return {
      {"model", "path", &m.path},
      {"model", "preset", &m.preset},
      {"model", "quant", &m.quant},
      {"model", "double_quant", &m.double_quant},
      {"model", "init_seed", &m.init_seed},
      {"lora", "r", &l.r},
      {"lora", "alpha", &l.alpha},
      {"lora", "dropout", &l.dropout},
      {"lora", "rslora", &l.rslora},
      {"lora", "targets", &l.targets},
      {"data", "path", &d.path},
      {"data", "synthetic", &d.synthetic},
      {"data", "synthetic_docs", &d.synthetic_docs},
      {"data", "format", &d.format},
      {"data", "tokenizer", &d.tokenizer},
      {"data", "template", &d.template_name},
      {"data", "train_on", &d.train_on},
      {"data", "max_seq_len", &d.max_seq_len},
      {"data", "overlong", &d.overlong},
      {"data", "on_bad_line", &d.on_bad_line},
      {"data", "cache_dir", &d.cache_dir},
      {"train", "device", &t.device},
      {"train", "token_budget", &t.token_budget},
      {"train", "global_batch", &t.global_batch},
      {"train", "steps", &t.steps},
      {"train", "epochs", &t.epochs},
      {"train", "lr", &t.lr},
      {"train", "schedule", &t.schedule},
      {"train", "warmup_steps", &t.warmup_steps},
      {"train", "min_lr_ratio", &t.min_lr_ratio},
      {"train", "weight_decay", &t.weight_decay},
      {"train", "beta1", &t.beta1},
      {"train", "beta2", &t.beta2},
      {"train", "eps", &t.eps},
      {"train", "max_grad_norm", &t.max_grad_norm},
      {"train", "recompute", &t.recompute},
      {"train", "seed", &t.seed},
      {"train", "log_every", &t.log_every},
      {"output", "dir", &o.dir},
      {"output", "checkpoint_every", &o.checkpoint_every},
      {"output", "keep_checkpoints", &o.keep_checkpoints},
      {"output", "export", &o.export_format},
      {"output", "resume", &o.resume},
  };
}

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

bool parse_int(const std::string& s, int* out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (*end != '\0' || errno == ERANGE || v < INT_MIN || v > INT_MAX) return false;
  *out = int(v);
  return true;
}

bool parse_float(const std::string& s, float* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  float v = std::strtof(s.c_str(), &end);
  if (*end != '\0') return false;
  *out = v;
  return true;
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

// What a node holds, for "found ..." in messages.
std::string describe(const YAML::Node& n) {
  if (n.IsScalar()) return cat('\'', n.Scalar(), '\'');
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "nothing";
}

// ---------------------------------------------------------------------------------------------
// Reading nodes into fields

// Collects problems; `where` is the location prefix of the next ones ("cfg.yaml:7" or
// "command line: lora.r=8").
struct Problems {
  std::vector<std::string> lines;
  void add(const std::string& where, const std::string& what) { lines.push_back(cat(where, ": ", what)); }
};

// Reads `value` into the member `ref` points to; returns "" or what was wrong.
struct Assign {
  const YAML::Node& value;
  std::string operator()(int* out) const {
    if (value.IsScalar() && parse_int(value.Scalar(), out)) return "";
    return cat("expected an integer, found ", describe(value));
  }
  std::string operator()(float* out) const {
    if (value.IsScalar() && parse_float(value.Scalar(), out)) return "";
    return cat("expected a number, found ", describe(value));
  }
  std::string operator()(bool* out) const {
    if (value.IsScalar() && parse_bool(value.Scalar(), out)) return "";
    return cat("expected true or false, found ", describe(value));
  }
  std::string operator()(std::string* out) const {
    // `key:` with nothing after it reads as "" (not set), as the empty defaults do.
    if (value.IsNull()) {
      out->clear();
    } else if (value.IsScalar()) {
      *out = value.Scalar();
    } else {
      return cat("expected a string, found ", describe(value));
    }
    return "";
  }
  std::string operator()(std::vector<std::string>* out) const {
    if (value.IsMap()) return cat("expected a list of strings, found ", describe(value));
    std::vector<std::string> items;
    if (value.IsScalar()) items.push_back(value.Scalar());  // one name is a one-item list: `targets: all-linear`
    for (size_t i = 0; value.IsSequence() && i < value.size(); ++i) {
      if (!value[i].IsScalar())
        return cat("expected a list of strings, found ", describe(value[i]), " as item ", i + 1);
      items.push_back(value[i].Scalar());
    }
    *out = std::move(items);
    return "";
  }
};

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
  std::string head = cat("unknown key '", section, '.', key, "'");
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
  if (!near.empty()) return cat("unknown section '", section, "'; did you mean '", near, "'?");
  return cat("unknown section '", section, "'; sections are: ", join(sections, ", "));
}

bool is_section(const std::string& s) {
  return std::find(std::begin(kSections), std::end(kSections), s) != std::end(kSections);
}

// Sets section.key from `value`; problems are reported at `where`.
void set_field(std::vector<Field>& fields, const std::string& section, const std::string& key,
               const YAML::Node& value, const std::string& where, Problems& problems) {
  if (!is_section(section)) return problems.add(where, unknown_section_message(section));
  for (Field& f : fields) {
    if (section != f.section || key != f.key) continue;
    std::string error = std::visit(Assign{value}, f.ref);
    if (!error.empty()) problems.add(where, cat(f.path(), ": ", error));
    return;
  }
  problems.add(where, unknown_key_message(fields, section, key));
}

std::string line_of(const std::string& source, const YAML::Node& n) {
  return cat(source, ':', n.Mark().line + 1);
}

void read_section(std::vector<Field>& fields, const std::string& section, const YAML::Node& body,
                  const std::string& source, Problems& problems) {
  std::vector<std::pair<std::string, int>> seen;  // key, line: yaml-cpp keeps duplicate keys silently
  for (const auto& entry : body) {
    std::string key = entry.first.Scalar();
    int line = entry.first.Mark().line + 1;
    std::string where = line_of(source, entry.first);
    auto dup = std::find_if(seen.begin(), seen.end(), [&](const auto& s) { return s.first == key; });
    if (dup != seen.end()) {
      problems.add(where, cat("duplicate key '", section, '.', key, "' (first set on line ",
                              dup->second, "); keep one"));
      continue;
    }
    seen.emplace_back(key, line);
    set_field(fields, section, key, entry.second, where, problems);
  }
}

void read_document(TrainConfig& cfg, const YAML::Node& root, const std::string& source, Problems& problems) {
  std::vector<Field> fields = fields_of(cfg);
  std::vector<std::string> seen;
  for (const auto& entry : root) {
    std::string section = entry.first.Scalar();
    std::string where = line_of(source, entry.first);
    if (!is_section(section)) {
      problems.add(where, unknown_section_message(section));
    } else if (std::find(seen.begin(), seen.end(), section) != seen.end()) {
      problems.add(where, cat("duplicate section '", section, "'; merge its keys into the first one"));
    } else if (!entry.second.IsNull() && !entry.second.IsMap()) {
      problems.add(where, cat(section, ": expected a mapping of keys, found ", describe(entry.second)));
    } else {
      read_section(fields, section, entry.second, source, problems);
    }
    seen.push_back(section);
  }
}

void apply_override(TrainConfig& cfg, const std::string& text, Problems& problems) {
  std::string where = cat("command line: ", text);
  size_t eq = text.find('=');
  size_t dot = text.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq || dot == 0 || dot + 1 == eq)
    return problems.add(where, "expected section.key=value (e.g. lora.r=8 or lora.targets=[q_proj,v_proj])");
  YAML::Node value;
  try {
    value = YAML::Load(text.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    return problems.add(where, cat("the value is not valid YAML: ", e.msg));
  }
  std::vector<Field> fields = fields_of(cfg);
  set_field(fields, text.substr(0, dot), text.substr(dot + 1, eq - dot - 1), value, where, problems);
}

// ---------------------------------------------------------------------------------------------
// Validation

// Adds "source: what" lines; the helpers phrase each rule the same way everywhere.
struct Checker {
  std::string source;
  std::vector<std::string> lines;

  void add(const std::string& what) { lines.push_back(cat(source, ": ", what)); }

  template <class T>
  void require(bool ok, const char* key, const char* rule, T found) {
    if (!ok) add(cat(key, " must be ", rule, " (found ", found, ")"));
  }
  void require(bool ok, const char* key, const char* rule, float found) {
    if (!ok) add(cat(key, " must be ", rule, " (found ", format_float(found), ")"));
  }

  void one_of(const char* key, const std::string& value, const std::vector<std::string>& allowed) {
    if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return;
    std::string near = closest(value, allowed);
    add(cat(key, " must be one of ", join(allowed, ", "), " (found '", value, "'",
            near.empty() ? "" : cat("; did you mean '", near, "'?"), ")"));
  }

  // Exactly one of two alternatives, e.g. model.path (an HF folder) or model.preset.
  void exactly_one(const char* a, const std::string& va, const char* b, const std::string& vb,
                   const char* hint) {
    if (va.empty() == vb.empty())
      add(cat("set exactly one of ", a, " or ", b, " (", hint, "); found ",
              va.empty() ? "neither" : cat("both: ", a, " = '", va, "', ", b, " = '", vb, "'")));
  }
};

const std::vector<std::string> kLoraTargets = {"q_proj", "k_proj", "v_proj", "o_proj",
                                               "gate_proj", "up_proj", "down_proj"};

void check_targets(Checker& c, const std::vector<std::string>& targets) {
  if (targets.empty())
    return c.add(cat("lora.targets must list at least one of ", join(kLoraTargets, ", "),
                     ", or be [all-linear] (found an empty list)"));
  if (targets.size() == 1 && targets[0] == "all-linear") return;
  for (size_t i = 0; i < targets.size(); ++i) {
    const std::string& t = targets[i];
    if (t == "all-linear") {
      c.add("lora.targets: all-linear means every projection; use it alone, as [all-linear]");
    } else if (std::find(kLoraTargets.begin(), kLoraTargets.end(), t) == kLoraTargets.end()) {
      std::string near = closest(t, kLoraTargets);
      c.add(cat("lora.targets: '", t, "' is not a projection; use ", join(kLoraTargets, ", "),
                " or all-linear", near.empty() ? "" : cat(" (did you mean '", near, "'?)")));
    } else if (std::find(targets.begin(), targets.begin() + i, t) != targets.begin() + i) {
      c.add(cat("lora.targets lists '", t, "' twice; keep one"));
    }
  }
}

void check_model(Checker& c, const ModelSection& m) {
  c.exactly_one("model.path", m.path, "model.preset", m.preset,
                "an HF folder, or a preset with random weights such as tiny");
  c.one_of("model.quant", m.quant, {"nf4", "bf16"});
}

void check_lora(Checker& c, const LoraSection& l) {
  c.require(l.r > 0, "lora.r", "> 0", l.r);
  c.require(l.alpha > 0, "lora.alpha", "> 0", l.alpha);
  c.require(l.dropout >= 0 && l.dropout < 1, "lora.dropout", "in [0, 1)", l.dropout);
  check_targets(c, l.targets);
}

void check_data(Checker& c, const DataSection& d, const TrainSection& t) {
  c.exactly_one("data.path", d.path, "data.synthetic", d.synthetic,
                "a JSONL file or prepared folder, or the synthetic workload sft-alpaca");
  if (!d.synthetic.empty()) c.one_of("data.synthetic", d.synthetic, {"sft-alpaca"});
  c.require(d.synthetic_docs > 0, "data.synthetic_docs", "> 0", d.synthetic_docs);
  c.one_of("data.format", d.format, {"auto", "messages", "sharegpt", "alpaca", "text"});
  c.one_of("data.template", d.template_name, {"auto", "chatml", "qwen3", "llama3", "mistral", "llama2", "none"});
  c.one_of("data.train_on", d.train_on, {"responses", "all"});
  c.one_of("data.overlong", d.overlong, {"truncate", "drop"});
  c.one_of("data.on_bad_line", d.on_bad_line, {"error", "skip"});
  c.require(d.max_seq_len > 0, "data.max_seq_len", "> 0", d.max_seq_len);
  if (d.max_seq_len > t.token_budget && t.token_budget > 0)
    c.add(cat("data.max_seq_len (", d.max_seq_len, ") must be <= train.token_budget (", t.token_budget,
              ") so that every sequence fits in one micro-batch; lower data.max_seq_len or raise "
              "train.token_budget"));
}

void check_train(Checker& c, const TrainSection& t) {
  c.one_of("train.device", t.device, {"auto", "cpu", "cuda"});
  c.require(t.token_budget > 0, "train.token_budget", "> 0", t.token_budget);
  c.require(t.global_batch > 0, "train.global_batch", "> 0", t.global_batch);
  c.require(t.steps >= 0, "train.steps", ">= 0 (0 = as many as train.epochs gives)", t.steps);
  c.require(t.epochs >= 1, "train.epochs", ">= 1", t.epochs);
  c.require(t.lr > 0, "train.lr", "> 0", t.lr);
  c.one_of("train.schedule", t.schedule, {"cosine", "linear", "constant"});
  c.require(t.warmup_steps >= 0, "train.warmup_steps", ">= 0", t.warmup_steps);
  c.require(t.min_lr_ratio >= 0 && t.min_lr_ratio <= 1, "train.min_lr_ratio", "in [0, 1]", t.min_lr_ratio);
  c.require(t.weight_decay >= 0, "train.weight_decay", ">= 0", t.weight_decay);
  c.require(t.beta1 >= 0 && t.beta1 < 1, "train.beta1", "in [0, 1)", t.beta1);
  c.require(t.beta2 >= 0 && t.beta2 < 1, "train.beta2", "in [0, 1)", t.beta2);
  c.require(t.eps > 0, "train.eps", "> 0", t.eps);
  c.one_of("train.recompute", t.recompute, {"none", "selective", "full"});
  c.require(t.log_every >= 1, "train.log_every", ">= 1", t.log_every);
}

void check_output(Checker& c, const OutputSection& o) {
  if (o.dir.empty()) c.add("output.dir must name the run folder (found an empty string)");
  c.require(o.checkpoint_every >= 0, "output.checkpoint_every", ">= 0 (0 = only the final checkpoint)",
            o.checkpoint_every);
  c.require(o.keep_checkpoints >= 1, "output.keep_checkpoints", ">= 1", o.keep_checkpoints);
  c.one_of("output.export", o.export_format, {"peft", "merged", "none"});
  if (o.resume.empty()) c.add("output.resume must be auto, never or a checkpoint folder (found '')");
}

std::string read_file(const std::string& path) {
  if (std::filesystem::is_directory(path)) fail("config ", path, " is a folder; give a YAML file such as configs/demo.yaml");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail("config file not found: ", path, " (give a path relative to the current folder, e.g. configs/demo.yaml)");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

std::vector<std::string> validate(const TrainConfig& cfg) {
  Checker c{cfg.source.empty() ? "config" : cfg.source, {}};
  check_model(c, cfg.model);
  check_lora(c, cfg.lora);
  check_data(c, cfg.data, cfg.train);
  check_train(c, cfg.train);
  check_output(c, cfg.output);
  return c.lines;
}

TrainConfig parse_config(const std::string& yaml_text, const std::string& source,
                         const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    fail(source, ':', e.mark.line + 1, ':', e.mark.column + 1, ": invalid YAML: ", e.msg);
  }
  if (!root.IsNull() && !root.IsMap())
    fail(line_of(source, root), ": expected a mapping of sections (model, lora, data, train, output), found ",
         describe(root));
  TrainConfig cfg;
  cfg.source = source;
  Problems problems;
  read_document(cfg, root, source, problems);
  for (const std::string& o : overrides) apply_override(cfg, o, problems);
  for (std::string& line : validate(cfg)) problems.lines.push_back(std::move(line));

  if (problems.lines.size() == 1) fail(problems.lines[0]);
  if (!problems.lines.empty())
    fail(problems.lines.size(), " problems in ", source, ":\n  ", join(problems.lines, "\n  "));
  return cfg;
}

TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_config(read_file(path), path, overrides);
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
    out << "  " << f.key << ": ";
    std::visit(
        [&](auto* v) {
          using T = std::remove_pointer_t<decltype(v)>;
          if constexpr (std::is_same_v<T, int>) out << *v;
          if constexpr (std::is_same_v<T, float>) out << format_float(*v);
          if constexpr (std::is_same_v<T, bool>) out << (*v ? "true" : "false");
          if constexpr (std::is_same_v<T, std::string>) out << yaml_string(*v);
          if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            std::vector<std::string> items;
            for (const std::string& s : *v) items.push_back(yaml_string(s));
            out << '[' << join(items, ", ") << ']';
          }
        },
        f.ref);
    out << '\n';
  }
  return out.str();
}

}  // namespace loom
