// Hostile checkpoints and run folders (issue #9): a tiny run is trained once on the CPU (4 steps,
// checkpoints at steps 2 and 4); every case copies it, damages one thing and resumes through
// train(), asserting the exact outcome: a loom::Error naming the damaged file (and, for output.resume
// = auto, how to go on), or a resume from the step it must take — harmless leftovers (unfinished
// saves, garbage lines in metrics.jsonl, odd entries in checkpoints/) and the checkpoint format
// before checksums are accepted, and output.resume=last_intact falls back past damage.
// Cases are generated: every checkpoint file × {byte flips at four places, truncations, an extra
// byte, deletion, a FIFO, a folder}, edited steps, NaN written into tensors, broken checksums.json
// files, kinds of garbage lines, stale temporary folders.
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "data/shards.h"
#include "engine/config.h"
#include "engine/trainer.h"
#include "ops/error.h"
#include "tests/hostile.h"

namespace fs = std::filesystem;

namespace loom::test {
namespace {

// The files checksums.json covers, and checksums.json itself.
const std::vector<std::string> kDataFiles = {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                                             "optimizer.safetensors", "trainer_state.json"};
const std::string kChecksums = "checksums.json";

// A copy of the trained run inside a case's folder.
struct Run {
  std::string dir;  // <case>/run
  std::string ck2() const { return dir + "/checkpoints/step-000002"; }
  std::string ck4() const { return dir + "/checkpoints/step-000004"; }
};

TrainConfig run_config(const std::string& dir, int steps, const std::vector<std::string>& extra) {
  std::vector<std::string> o = {"model.preset=tiny", "model.quant=bf16", "data.synthetic=sft-alpaca",
                                "data.synthetic_docs=16", "data.max_seq_len=48", "train.token_budget=128",
                                "train.global_batch=4", "train.steps=" + std::to_string(steps), "train.lr=1e-2",
                                "train.device=cpu", "lora.r=2", "output.checkpoint_every=2", "output.export=none",
                                "output.dir=" + dir};
  o.insert(o.end(), extra.begin(), extra.end());
  return parse_config("", "hostile checkpoint run", o);
}

// Trained once per process, on first use (not while the cases are generated), in a folder of its
// own (test processes may run side by side) that goes when the process ends.
const std::string& trained_run() {
  struct Base {
    std::string dir;
    Base() {
      std::string tmpl = testing::TempDir() + "loom_hostile_checkpoint_XXXXXX";
      if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
      dir = tmpl + "/run";
      train(run_config(dir, 4, {}));
    }
    ~Base() { fs::remove_all(fs::path(dir).parent_path()); }
  };
  static const Base base;
  return base.dir;
}

// Resumes the run for one more step (5 in all), with extra overrides: raising train.steps of a run
// folder is an explicit choice (output.on_change=accept), else refused before any checkpoint is read.
TrainSummary resume(const Run& r, std::vector<std::string> extra = {}) {
  extra.insert(extra.begin(), "output.on_change=accept");
  return train(run_config(r.dir, 5, extra));
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// Rewrites checksums.json from the files as they are now: a damage that the checksums cannot see,
// left for the checks behind them (step vs folder, finite tensors).
void reseal(const std::string& ck) {
  nlohmann::ordered_json files;
  for (const std::string& f : kDataFiles)
    files[f] = {{"bytes", fs::file_size(ck + "/" + f)}, {"fnv1a64", hex64(fnv1a64_file(ck + "/" + f, "test"))}};
  write_all(ck + "/" + kChecksums, nlohmann::ordered_json{{"hash", "fnv1a64"}, {"files", files}}.dump(2));
}

void flip_byte(const std::string& path, double where) {
  std::string bytes = read_all(path);
  const size_t at = std::min(bytes.size() - 1, size_t(where * double(bytes.size())));
  bytes[at] = char(bytes[at] ^ 0xff);
  write_all(path, bytes);
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_all(path)); }

void edit_state(const std::string& ck, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json state = read_json(ck + "/trainer_state.json");
  edit(state);
  write_all(ck + "/trainer_state.json", state.dump(2) + "\n");
}

// Overwrites element `index` of a tensor in a safetensors file (header: u64 length, JSON, data).
void write_element(const std::string& path, const std::string& tensor, int64_t index, float value) {
  std::string bytes = read_all(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_len));
  const size_t at = 8 + header_len + header.at(tensor).at("data_offsets")[0].get<size_t>() + size_t(index) * 4;
  std::memcpy(&bytes[at], &value, 4);
  write_all(path, bytes);
}

// Turns a checkpoint into the format before checksums.
void make_format_1(const std::string& ck) {
  fs::remove(ck + "/" + kChecksums);
  edit_state(ck, [](nlohmann::json& s) { s.erase("checkpoint_format"); });
}

std::vector<int> logged_steps(const Run& r) {
  std::vector<int> steps;
  std::ifstream f(r.dir + "/metrics.jsonl");
  for (std::string l; std::getline(f, l);) steps.push_back(nlohmann::json::parse(l).at("step").get<int>());
  return steps;
}

std::string name_of(const std::string& text) {
  std::string n;
  for (char c : text) n += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return n;
}

using Damage = std::function<void(const Run&)>;
using Check = std::function<void(const Run&)>;

Run copy_of_trained_run(const std::string& case_dir) {
  Run r{case_dir + "/run"};
  fs::copy(trained_run(), r.dir, fs::copy_options::recursive);
  return r;
}

// The run, damaged, must fail to resume with a message holding every part of `expect`.
HostileCase refused(const std::string& name, Damage damage, std::vector<std::string> expect,
                    std::vector<std::string> overrides = {}) {
  return {name, [=](const std::string& dir) {
            Run r = copy_of_trained_run(dir);
            damage(r);
            resume(r, overrides);
          },
          std::move(expect)};
}

// The run, changed, must resume from `from_step`, train on to step 5 and pass `after`.
HostileCase accepted(const std::string& name, Damage change, int64_t from_step, std::vector<std::string> overrides = {},
                     Check after = {}) {
  return {name, [=](const std::string& dir) {
            Run r = copy_of_trained_run(dir);
            change(r);
            const TrainSummary s = resume(r, overrides);
            EXPECT_EQ(s.first_step, from_step) << name;
            EXPECT_EQ(s.last_step, 5) << name;
            if (after) after(r);
          },
          {}};
}

// Parts of the error for damage to file `f` of step-000004 when output.resume = auto.
std::vector<std::string> auto_error(const std::string& f, const std::string& what) {
  return {"checkpoints/step-000004/" + f + what, "Nothing was changed", "output.resume=last_intact"};
}

// The error for file `f` of step-000004 holding another number of bytes than recorded.
std::vector<std::string> resized(const std::string& f) {
  std::vector<std::string> parts = auto_error(f, " has ");
  parts.push_back(" bytes where checksums.json recorded ");
  parts.push_back(" (truncated or changed after the save)");
  return parts;
}

void add_byte_damage(std::vector<HostileCase>& cases) {
  for (const std::string& f : kDataFiles) {
    const std::string n = name_of(f);
    for (double where : {0.0, 1.0 / 3, 2.0 / 3, 1.0})
      cases.push_back(refused(cat("flip_", n, "_at_", int(where * 100), "pct"),
                              [=](const Run& r) { flip_byte(r.ck4() + "/" + f, where); },
                              auto_error(f, ": its contents differ from checksums.json (changed after the save)")));
    cases.push_back(refused("truncate_" + n + "_to_0", [=](const Run& r) { write_all(r.ck4() + "/" + f, ""); },
                            auto_error(f, " has 0 bytes where checksums.json recorded")));
    cases.push_back(refused("truncate_" + n + "_to_half",
                            [=](const Run& r) {
                              const std::string p = r.ck4() + "/" + f;
                              fs::resize_file(p, fs::file_size(p) / 2);
                            },
                            resized(f)));
    cases.push_back(refused("append_to_" + n,
                            [=](const Run& r) { std::ofstream(r.ck4() + "/" + f, std::ios::app) << 'x'; },
                            resized(f)));
    cases.push_back(refused("delete_" + n, [=](const Run& r) { fs::remove(r.ck4() + "/" + f); },
                            auto_error(f, " is missing (checksums.json lists it)")));
    cases.push_back(refused("fifo_for_" + n,
                            [=](const Run& r) {
                              fs::remove(r.ck4() + "/" + f);
                              mkfifo((r.ck4() + "/" + f).c_str(), 0600);
                            },
                            auto_error(f, " is a FIFO (named pipe)")));
    cases.push_back(refused("folder_for_" + n,
                            [=](const Run& r) {
                              fs::remove(r.ck4() + "/" + f);
                              fs::create_directories(r.ck4() + "/" + f);
                            },
                            auto_error(f, " is a folder")));
  }
}

void add_checksums_file_damage(std::vector<HostileCase>& cases) {
  const std::string path = "checkpoints/step-000004/checksums.json";
  for (double where : {0.0, 1.0 / 3, 2.0 / 3, 1.0})
    cases.push_back(refused(cat("flip_checksums_json_at_", int(where * 100), "pct"),
                            [=](const Run& r) { flip_byte(r.ck4() + "/" + kChecksums, where); },
                            {path + ": invalid JSON", "output.resume=last_intact"}));
  cases.push_back(refused("truncate_checksums_json_to_0",
                          [](const Run& r) { write_all(r.ck4() + "/" + kChecksums, ""); },
                          {path + ": invalid JSON"}));
  cases.push_back(refused("truncate_checksums_json_to_half",
                          [](const Run& r) {
                            const std::string p = r.ck4() + "/" + kChecksums;
                            fs::resize_file(p, fs::file_size(p) / 2);
                          },
                          {path + ": invalid JSON"}));
  cases.push_back(refused("append_x_to_checksums_json",
                          [](const Run& r) { std::ofstream(r.ck4() + "/" + kChecksums, std::ios::app) << 'x'; },
                          {path + ": invalid JSON"}));
  cases.push_back(accepted("append_whitespace_to_checksums_json",
                           [](const Run& r) { std::ofstream(r.ck4() + "/" + kChecksums, std::ios::app) << "\n \n"; },
                           4));
  cases.push_back(refused("delete_checksums_json", [](const Run& r) { fs::remove(r.ck4() + "/" + kChecksums); },
                          {path + " is missing, but trainer_state.json says the checkpoint was written with checksums",
                           "output.resume=last_intact"}));
  cases.push_back(refused("fifo_for_checksums_json",
                          [](const Run& r) {
                            fs::remove(r.ck4() + "/" + kChecksums);
                            mkfifo((r.ck4() + "/" + kChecksums).c_str(), 0600);
                          },
                          {path + " is a FIFO (named pipe)"}));
  cases.push_back(refused("folder_for_checksums_json",
                          [](const Run& r) {
                            fs::remove(r.ck4() + "/" + kChecksums);
                            fs::create_directories(r.ck4() + "/" + kChecksums);
                          },
                          {path + " is a folder"}));

  // Well-formed JSON that is not what loom writes.
  struct Manifest {
    const char* name;
    std::function<void(nlohmann::json&)> edit;
    const char* expect;
  };
  const std::vector<Manifest> manifests = {
      {"other_hash", [](nlohmann::json& j) { j["hash"] = "sha256"; }, "expected an object with \"hash\": \"fnv1a64\""},
      {"array", [](nlohmann::json& j) { j = nlohmann::json::array(); }, "expected an object with \"hash\""},
      {"files_array", [](nlohmann::json& j) { j["files"] = nlohmann::json::array(); }, "expected a \"files\" object"},
      {"file_left_out", [](nlohmann::json& j) { j["files"].erase("adapter/adapter_config.json"); },
       "does not list adapter/adapter_config.json"},
      {"path_outside", [](nlohmann::json& j) { j["files"]["../../../etc/passwd"] = j["files"]["trainer_state.json"]; },
       "lists '../../../etc/passwd', which is not a checkpoint file"},
      {"bytes_string", [](nlohmann::json& j) { j["files"]["optimizer.safetensors"]["bytes"] = "299192"; },
       "the entry of optimizer.safetensors must be"},
      {"bytes_negative", [](nlohmann::json& j) { j["files"]["optimizer.safetensors"]["bytes"] = -1; },
       "the entry of optimizer.safetensors must be"},
      {"hash_uppercase", [](nlohmann::json& j) { j["files"]["trainer_state.json"]["fnv1a64"] = "ABCDEF0123456789"; },
       "the entry of trainer_state.json must be"},
      {"hash_short", [](nlohmann::json& j) { j["files"]["trainer_state.json"]["fnv1a64"] = "abc"; },
       "the entry of trainer_state.json must be"},
      {"hash_of_another_file",
       [](nlohmann::json& j) {
         j["files"]["trainer_state.json"]["fnv1a64"] = j["files"]["optimizer.safetensors"]["fnv1a64"];
       },
       "trainer_state.json: its contents differ from checksums.json"},
  };
  for (const Manifest& m : manifests)
    cases.push_back(refused(cat("checksums_json_", m.name),
                            [edit = m.edit](const Run& r) {
                              nlohmann::json j = read_json(r.ck4() + "/" + kChecksums);
                              edit(j);
                              write_all(r.ck4() + "/" + kChecksums, j.dump());
                            },
                            {m.expect}));
  cases.push_back(refused("checksums_json_deep",
                          [](const Run& r) {
                            write_all(r.ck4() + "/" + kChecksums, std::string(200000, '[') + std::string(200000, ']'));
                          },
                          {path + ": JSON nested deeper than"}));
}

void add_foreign_files(std::vector<HostileCase>& cases) {
  // (file added, the entry the error names: the first unlisted one in path order)
  const std::vector<std::pair<std::string, std::string>> extras = {
      {"notes.txt", "notes.txt"}, {".hidden", ".hidden"}, {"adapter/README.md", "adapter/README.md"},
      {"extra/deep/file.bin", "extra"}};
  for (const auto& [file, named] : extras)
    cases.push_back(refused("extra_" + name_of(file),
                            [f = file](const Run& r) {
                              fs::create_directories(fs::path(r.ck4() + "/" + f).parent_path());
                              write_all(r.ck4() + "/" + f, "not part of it");
                            },
                            {"checkpoints/step-000004/" + named + " is not part of the checkpoint (checksums.json "
                                                                  "does not list it; move it out if you put it there)",
                             "output.resume=last_intact"}));
  cases.push_back(refused("extra_symlink",
                          [](const Run& r) { fs::create_symlink("/etc/passwd", r.ck4() + "/link"); },
                          {"checkpoints/step-000004/link is not part of the checkpoint"}));
}

void add_step_edits(std::vector<HostileCase>& cases) {
  const std::string state = "checkpoints/step-000004/trainer_state.json: ";
  // Consistent step and optimizer_step, checksums rewritten: only the folder name can tell.
  for (int64_t step : {2, 3, 5, 1000}) {
    cases.push_back(refused(cat("resealed_step_", step),
                            [=](const Run& r) {
                              edit_state(r.ck4(), [=](nlohmann::json& s) { s["step"] = s["optimizer_step"] = step; });
                              reseal(r.ck4());
                            },
                            {state + cat("step ", step, " but the folder is step-000004"),
                             "output.resume=last_intact"}));
  }
  for (int64_t step : {int64_t(0), int64_t(-1), int64_t(1) << 40})
    cases.push_back(refused(cat("resealed_step_", step < 0 ? "minus_1" : std::to_string(step)),
                            [=](const Run& r) {
                              edit_state(r.ck4(), [=](nlohmann::json& s) { s["step"] = s["optimizer_step"] = step; });
                              reseal(r.ck4());
                            },
                            {state + cat("step ", step, " is out of range")}));
  struct Odd {
    const char* name;
    nlohmann::json value;
    const char* found;
  };
  for (const Odd& o : {Odd{"string", "4", "\"4\""}, Odd{"fraction", 4.5, "4.5"}, Odd{"null", nullptr, "null"},
                       Odd{"huge", 1e300, "1e+300"}})
    cases.push_back(refused(cat("resealed_step_", o.name),
                            [v = o.value](const Run& r) {
                              edit_state(r.ck4(), [&](nlohmann::json& s) { s["step"] = v; });
                              reseal(r.ck4());
                            },
                            {state + "\"step\" must be an integer (found " + o.found + ")"}));
  for (int64_t opt_step : {0, 5})
    cases.push_back(refused(cat("resealed_optimizer_step_", opt_step),
                            [=](const Run& r) {
                              edit_state(r.ck4(), [=](nlohmann::json& s) { s["optimizer_step"] = opt_step; });
                              reseal(r.ck4());
                            },
                            {state + cat("optimizer_step ", opt_step, " is not in [1, step 4]")}));
  cases.push_back(refused("resealed_no_loader",
                          [](const Run& r) {
                            edit_state(r.ck4(), [](nlohmann::json& s) { s.erase("loader"); });
                            reseal(r.ck4());
                          },
                          {state + "missing \"loader\""}));
  cases.push_back(refused("edited_step_5_without_reseal",
                          [](const Run& r) {
                            edit_state(r.ck4(), [](nlohmann::json& s) { s["step"] = s["optimizer_step"] = 5; });
                          },
                          auto_error("trainer_state.json", ": its contents differ from checksums.json")));
  cases.push_back(refused("folder_renamed_to_step_5",
                          [](const Run& r) { fs::rename(r.ck4(), r.dir + "/checkpoints/step-000005"); },
                          {"checkpoints/step-000005/trainer_state.json: step 4 but the folder is step-000005"}));
}

// "a @b" -> {"a ", "b", "output.resume=last_intact"}: the parts around the case's own folder.
std::vector<std::string> message_parts(const std::string& expect) {
  const size_t at = expect.find('@');
  std::vector<std::string> parts = {expect.substr(0, at)};
  if (at != std::string::npos) parts.push_back(expect.substr(at + 1));
  parts.push_back("output.resume=last_intact");
  return parts;
}

void add_tensor_values(std::vector<HostileCase>& cases) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  struct Poke {
    const char* name;
    const char* file;
    const char* tensor;
    int64_t index;
    float value;
    const char* expect;
  };
  const std::string lora_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  const std::string lora_b = "base_model.model.model.layers.3.mlp.down_proj.lora_B.weight";
  const std::vector<Poke> pokes = {
      {"exp_avg_nan", "optimizer.safetensors", "exp_avg", 0, nan,
       "tensor 'exp_avg' in " "@step-000004/optimizer.safetensors holds nan at index [0]"},
      {"exp_avg_inf", "optimizer.safetensors", "exp_avg", 11, -inf,
       "tensor 'exp_avg' in " "@step-000004/optimizer.safetensors holds -inf at index [11]"},
      {"exp_avg_sq_negative", "optimizer.safetensors", "exp_avg_sq", 7, -1.f,
       "step-000004/optimizer.safetensors: exp_avg_sq[7] is -1 (a mean of squares is >= 0)"},
      {"exp_avg_sq_inf", "optimizer.safetensors", "exp_avg_sq", 3, inf,
       "tensor 'exp_avg_sq' in " "@step-000004/optimizer.safetensors holds inf at index [3]"},
      {"lora_a_nan", "adapter/adapter_model.safetensors", lora_a.c_str(), 0, nan,
       "tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' in "
       "@step-000004/adapter/adapter_model.safetensors holds nan at index [0, 0]"},
      {"lora_b_huge", "adapter/adapter_model.safetensors", lora_b.c_str(), 1, 1e30f,
       "step-000004/adapter/adapter_model.safetensors: model.layers.3.mlp.down_proj lora_B[1] is 1e+30 (beyond"},
  };
  for (const Poke& p : pokes) {
    const std::string file = p.file, tensor = p.tensor;
    const int64_t index = p.index;
    const float value = p.value;
    cases.push_back(refused(cat("resealed_", p.name),
                            [=](const Run& r) {
                              write_element(r.ck4() + "/" + file, tensor, index, value);
                              reseal(r.ck4());
                            },
                            message_parts(p.expect)));
    cases.push_back(refused(cat("unsealed_", p.name),
                            [=](const Run& r) { write_element(r.ck4() + "/" + file, tensor, index, value); },
                            auto_error(file, ": its contents differ from checksums.json")));
  }
}

void add_format_1(std::vector<HostileCase>& cases) {
  cases.push_back(accepted("format_1_checkpoint", [](const Run& r) { make_format_1(r.ck4()); }, 4));
  cases.push_back(refused("format_1_with_edited_step",
                          [](const Run& r) {
                            make_format_1(r.ck4());
                            edit_state(r.ck4(), [](nlohmann::json& s) { s["step"] = s["optimizer_step"] = 2; });
                          },
                          {"trainer_state.json: step 2 but the folder is step-000004"}));
  cases.push_back(refused("format_1_without_trainer_state",
                          [](const Run& r) {
                            make_format_1(r.ck4());
                            fs::remove(r.ck4() + "/trainer_state.json");
                          },
                          {"checkpoints/step-000004/trainer_state.json is missing"}));
  cases.push_back(refused("format_1_with_garbage_trainer_state",
                          [](const Run& r) {
                            make_format_1(r.ck4());
                            write_all(r.ck4() + "/trainer_state.json", "{\"step\": 4,");
                          },
                          {"checkpoints/step-000004/trainer_state.json: invalid JSON"}));
  cases.push_back(refused("format_1_with_nan_moment",
                          [](const Run& r) {
                            make_format_1(r.ck4());
                            write_element(r.ck4() + "/optimizer.safetensors", "exp_avg", 0,
                                          std::numeric_limits<float>::quiet_NaN());
                          },
                          {"tensor 'exp_avg' in ", "step-000004/optimizer.safetensors holds nan at index [0]"}));
}

void add_resume_choices(std::vector<HostileCase>& cases) {
  const std::vector<std::string> fallback = {"output.resume=last_intact"};
  const std::vector<std::pair<std::string, Damage>> damages = {
      {"flipped_optimizer", [](const Run& r) { flip_byte(r.ck4() + "/optimizer.safetensors", 0.5); }},
      {"deleted_adapter_config", [](const Run& r) { fs::remove(r.ck4() + "/adapter/adapter_config.json"); }},
      {"truncated_trainer_state", [](const Run& r) { write_all(r.ck4() + "/trainer_state.json", "{"); }},
      {"extra_file", [](const Run& r) { write_all(r.ck4() + "/notes.txt", "x"); }},
      {"resealed_nan", [](const Run& r) {
         write_element(r.ck4() + "/optimizer.safetensors", "exp_avg", 2, std::numeric_limits<float>::quiet_NaN());
         reseal(r.ck4());
       }},
      {"renamed_folder", [](const Run& r) { fs::rename(r.ck2(), r.dir + "/checkpoints/step-000003"); }},
      {"empty_newer_folder", [](const Run& r) { fs::create_directories(r.dir + "/checkpoints/step-000006"); }},
  };
  for (const auto& [name, damage] : damages) {
    // renamed_folder damages step 2 (now "step-000003"), so last_intact keeps step 4.
    const int64_t from = name == "renamed_folder" || name == "empty_newer_folder" ? 4 : 2;
    cases.push_back(accepted("last_intact_past_" + name, damage, from, fallback));
  }
  cases.push_back(refused("empty_newer_folder_with_auto",
                          [](const Run& r) { fs::create_directories(r.dir + "/checkpoints/step-000006"); },
                          {"checkpoints/step-000006/trainer_state.json is missing", "output.resume=last_intact"}));
  cases.push_back(accepted("last_intact_with_nothing_damaged", [](const Run&) {}, 4, fallback));
  cases.push_back(accepted("last_intact_without_checkpoints",
                           [](const Run& r) { fs::remove_all(r.dir + "/checkpoints"); }, 0, fallback,
                           [](const Run& r) { EXPECT_EQ(logged_steps(r), (std::vector<int>{1, 2, 3, 4, 5})); }));
  cases.push_back(refused("last_intact_with_every_checkpoint_damaged",
                          [](const Run& r) {
                            flip_byte(r.ck4() + "/optimizer.safetensors", 0.5);
                            flip_byte(r.ck2() + "/adapter/adapter_model.safetensors", 0.5);
                          },
                          {"output.resume=last_intact: no checkpoint in", "step-000004/optimizer.safetensors",
                           "step-000002/adapter/adapter_model.safetensors", "Nothing was changed"},
                          fallback));
  // A named folder: its damage is refused with the other ways on; an intact one resumes.
  cases.push_back({"named_folder_damaged",
                   [](const std::string& dir) {
                     Run r = copy_of_trained_run(dir);
                     flip_byte(r.ck2() + "/trainer_state.json", 0.5);
                     resume(r, {"output.resume=" + r.ck2()});
                   },
                   {"step-000002/trainer_state.json: its contents differ",
                    "Name another checkpoint folder in output.resume"}});
  cases.push_back({"named_folder_intact",
                   [](const std::string& dir) {
                     Run r = copy_of_trained_run(dir);
                     EXPECT_EQ(resume(r, {"output.resume=" + r.ck2()}).first_step, 2);
                   },
                   {}});
}

void add_metrics_garbage(std::vector<HostileCase>& cases) {
  const std::vector<std::pair<std::string, std::string>> kinds = {
      {"not_json", "not json at all"},
      {"string_step", "{\"step\":\"3\",\"loss\":1.5}"},
      {"fraction_step", "{\"step\":2.5}"},
      {"no_step", "{\"loss\":1.5}"},
      {"negative_step", "{\"step\":-1}"},
      {"huge_step", "{\"step\":1e400}"},
      {"deep", std::string(100000, '[') + std::string(100000, ']')},
      {"binary", std::string("\x00\xff\xfe\x01", 4)},
      {"torn", "{\"step\":3,\"lo"},
      {"empty_lines", "\n\n"},
      {"steps_of_a_killed_attempt", "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4}"},
      {"steps_after_the_checkpoint", "{\"step\":5}\n{\"step\":6}\n{\"step\":9}"},
  };
  for (const auto& [name, garbage] : kinds)
    cases.push_back(accepted("metrics_jsonl_" + name,
                             [g = garbage](const Run& r) {
                               const std::string log = read_all(r.dir + "/metrics.jsonl");
                               const size_t mid = log.find('\n', log.size() / 2) + 1;
                               write_all(r.dir + "/metrics.jsonl", log.substr(0, mid) + g + "\n" + log.substr(mid));
                             },
                             4, {},
                             [](const Run& r) { EXPECT_EQ(logged_steps(r), (std::vector<int>{1, 2, 3, 4, 5})); }));
  cases.push_back(refused("metrics_jsonl_fifo",
                          [](const Run& r) {
                            fs::remove(r.dir + "/metrics.jsonl");
                            mkfifo((r.dir + "/metrics.jsonl").c_str(), 0600);
                          },
                          {"metrics log", "run/metrics.jsonl is a FIFO (named pipe)"}));
  cases.push_back(refused("metrics_jsonl_folder",
                          [](const Run& r) {
                            fs::remove(r.dir + "/metrics.jsonl");
                            fs::create_directories(r.dir + "/metrics.jsonl");
                          },
                          {"run/metrics.jsonl is a folder"}));
}

void add_leftovers(std::vector<HostileCase>& cases) {
  const std::vector<std::string> temps = {".step-000006.tmp", ".step-000004.tmp", ".step-000002.tmp"};
  for (const std::string& t : temps)
    cases.push_back(accepted("unfinished_save_" + name_of(t),
                             [=](const Run& r) {
                               fs::create_directories(r.dir + "/checkpoints/" + t + "/adapter");
                               write_all(r.dir + "/checkpoints/" + t + "/adapter/adapter_model.safetensors", "half");
                             },
                             4, {}, [=](const Run& r) { EXPECT_FALSE(fs::exists(r.dir + "/checkpoints/" + t)); }));
  cases.push_back(accepted("unfinished_save_as_a_file",
                           [](const Run& r) { write_all(r.dir + "/checkpoints/.step-000008.tmp", "x"); }, 4, {},
                           [](const Run& r) { EXPECT_FALSE(fs::exists(r.dir + "/checkpoints/.step-000008.tmp")); }));
  // Entries that are not loom's checkpoints are neither read nor deleted.
  const std::vector<std::string> odd = {"step-abc/", "step-000004.bak/", "step-000009", ".notes/", "README"};
  for (const std::string& o : odd)
    cases.push_back(accepted("odd_entry_" + name_of(o),
                             [=](const Run& r) {
                               const std::string p = r.dir + "/checkpoints/" + o;
                               if (o.back() == '/')
                                 fs::create_directories(p);
                               else
                                 write_all(p, "x");
                             },
                             4, {}, [=](const Run& r) { EXPECT_TRUE(fs::exists(r.dir + "/checkpoints/" + o)); }));
  cases.push_back(accepted("no_checkpoints_but_a_log",
                           [](const Run& r) { fs::remove_all(r.dir + "/checkpoints"); }, 0, {},
                           [](const Run& r) { EXPECT_EQ(logged_steps(r), (std::vector<int>{1, 2, 3, 4, 5})); }));
}

std::vector<HostileCase> checkpoint_cases() {
  std::vector<HostileCase> cases;
  add_byte_damage(cases);
  add_checksums_file_damage(cases);
  add_foreign_files(cases);
  add_step_edits(cases);
  add_tensor_values(cases);
  add_format_1(cases);
  add_resume_choices(cases);
  add_metrics_garbage(cases);
  add_leftovers(cases);
  return cases;
}

}  // namespace

LOOM_HOSTILE_SUITE(HostileCheckpoint, checkpoint_cases);

}  // namespace loom::test
