#include "engine/checkpoint.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include "data/shards.h"
#include "engine/divergence.h"
#include "models/safetensors.h"
#include "ops/error.h"
#include "ops/files.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

// 1: loom before checksums.json; 2: checksums.json written last.
constexpr int kCheckpointFormat = 2;
constexpr const char* kChecksumsFile = "checksums.json";
// The files of a checkpoint, relative to its folder; checksums.json lists exactly these.
const char* const kCheckpointFiles[] = {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                                        "optimizer.safetensors", "trainer_state.json"};

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%06lld", static_cast<long long>(step));
  return buf;
}

// N of a name "<prefix>N<suffix>" with N all digits (at most 18: it fits int64_t).
std::optional<int64_t> step_in_name(const std::string& name, const std::string& prefix, const std::string& suffix) {
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return std::nullopt;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return std::stoll(digits);
}

// "runs/a/checkpoints/step-000004/" -> "step-000004"
std::string folder_name(const std::string& dir) {
  fs::path p(dir);
  if (!p.has_filename()) p = p.parent_path();
  return p.filename().string();
}

struct StepFolder {
  int64_t step;
  fs::path path;
};

// checkpoints/step-N folders, by step, oldest first.
std::vector<StepFolder> step_folders(const std::string& run_dir) {
  std::vector<StepFolder> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(run_dir) / "checkpoints", ec))
    if (auto step = step_in_name(e.path().filename().string(), "step-", ""); step && e.is_directory(ec))
      out.push_back({*step, e.path()});
  std::sort(out.begin(), out.end(), [](const StepFolder& a, const StepFolder& b) { return a.step < b.step; });
  return out;
}

// Keeps the newest `keep` checkpoints up to `step`. Later ones (left by a run that resumed from an
// earlier checkpoint and is training those steps again, e.g. damaged ones that output.resume =
// last_intact skipped) stay until this run overwrites them, so that no intact one is deleted in
// their favour. The checkpoint of step `spared` (the best eval loss, output.keep_best) is never deleted,
// also when it is older than the newest `keep`.
void remove_old_checkpoints(const std::string& run_dir, int64_t step, int keep, std::optional<int64_t> spared) {
  std::vector<StepFolder> done;
  for (StepFolder& f : step_folders(run_dir))
    if (f.step <= step) done.push_back(std::move(f));
  for (size_t i = 0; i + size_t(std::max(keep, 1)) < done.size(); ++i)
    if (!spared || done[i].step != *spared) fs::remove_all(done[i].path);
}

void write_text_file(const fs::path& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.close();
  LOOM_CHECK(f, "cannot write ", path.string(), " (disk full or no permission?)");
}

// checksums.json of the files as they are on disk: written after them, so it covers what was saved.
void write_checksums(const fs::path& dir) {
  nlohmann::ordered_json files;
  for (const char* f : kCheckpointFiles) {
    const fs::path p = dir / f;
    files[f] = {{"bytes", fs::file_size(p)}, {"fnv1a64", hex64(fnv1a64_file(p.string(), "checkpoint file"))}};
  }
  const nlohmann::ordered_json manifest = {{"hash", "fnv1a64"}, {"files", files}};
  write_text_file(dir / kChecksumsFile, manifest.dump(2) + "\n");
}

bool is_checkpoint_file(const std::string& rel) {
  return std::find(std::begin(kCheckpointFiles), std::end(kCheckpointFiles), rel) != std::end(kCheckpointFiles);
}

bool is_hex16(const nlohmann::json& v) {
  return v.is_string() && v.get<std::string>().size() == 16 &&
         v.get<std::string>().find_first_not_of("0123456789abcdef") == std::string::npos;
}

// The "files" object of checksums.json, every entry checked for shape: {"bytes": N, "fnv1a64": hex}.
nlohmann::json checksum_entries(const fs::path& manifest) {
  const std::string where = manifest.string();
  const nlohmann::json j = read_json_file(where, "checkpoint checksums");
  LOOM_CHECK(j.is_object() && j.contains("hash") && j["hash"] == "fnv1a64", where,
             ": expected an object with \"hash\": \"fnv1a64\" (written by loom; not a loom checksums file?)");
  LOOM_CHECK(j.contains("files") && j["files"].is_object(), where, ": expected a \"files\" object");
  const nlohmann::json& files = j["files"];
  for (const auto& [name, entry] : files.items()) {
    LOOM_CHECK(is_checkpoint_file(name), where, ": lists '", name, "', which is not a checkpoint file");
    LOOM_CHECK(entry.is_object() && entry.contains("bytes") && entry["bytes"].is_number_unsigned() &&
                   entry.contains("fnv1a64") && is_hex16(entry["fnv1a64"]),
               where, ": the entry of ", name, " must be {\"bytes\": N, \"fnv1a64\": \"<16 hex digits>\"}");
  }
  for (const char* f : kCheckpointFiles) LOOM_CHECK(files.contains(f), where, ": does not list ", f);
  return files;
}

// One listed file against its entry: there, a regular file, its size, its hash.
void check_file(const fs::path& dir, const std::string& rel, const nlohmann::json& entry) {
  const fs::path p = dir / rel;
  std::error_code ec;
  LOOM_CHECK(fs::exists(fs::status(p, ec)), p.string(), " is missing (", kChecksumsFile, " lists it)");
  require_regular_file(p.string(), "checkpoint file");
  const uintmax_t bytes = fs::file_size(p), want = entry["bytes"].get<uintmax_t>();
  LOOM_CHECK(bytes == want, p.string(), " has ", bytes, " bytes where ", kChecksumsFile, " recorded ", want,
             " (truncated or changed after the save)");
  LOOM_CHECK(hex64(fnv1a64_file(p.string(), "checkpoint file")) == entry["fnv1a64"].get<std::string>(), p.string(),
             ": its contents differ from ", kChecksumsFile, " (changed after the save)");
}

// Anything in the folder besides the checkpoint's files: a checkpoint holds exactly what was saved.
void check_no_foreign_files(const fs::path& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    const std::string rel = e.path().lexically_relative(dir).generic_string();
    const bool expected = rel == "adapter" ? e.is_directory(ec) : is_checkpoint_file(rel) || rel == kChecksumsFile;
    if (!expected) found.push_back(e.path().string());
  }
  LOOM_CHECK(!ec, "cannot list ", dir.string(), ": ", ec.message());
  std::sort(found.begin(), found.end());
  LOOM_CHECK(found.empty(), found.empty() ? "" : found[0], " is not part of the checkpoint (", kChecksumsFile,
             " does not list it; move it out if you put it there)");
}

// A folder without checksums.json must be format 1 (older loom), whose trainer_state.json has no
// "checkpoint_format"; a format-2 one has lost its checksums.
void require_format_1(const fs::path& dir) {
  const fs::path state = dir / "trainer_state.json";
  std::error_code ec;
  LOOM_CHECK(fs::exists(fs::symlink_status(state, ec)), state.string(), " is missing (not a loom checkpoint?)");
  const nlohmann::json j = read_json_file(state.string(), "trainer state");
  LOOM_CHECK(!(j.is_object() && j.contains("checkpoint_format")), (dir / kChecksumsFile).string(),
             " is missing, but trainer_state.json says the checkpoint was written with checksums");
}

// True when verified; false for a format-1 checkpoint, which has nothing to verify against.
bool verify_checksums(const fs::path& dir) {
  const fs::path manifest = dir / kChecksumsFile;
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(manifest, ec))) {
    require_format_1(dir);
    return false;
  }
  const nlohmann::json files = checksum_entries(manifest);
  for (const char* f : kCheckpointFiles) check_file(dir, f, files[f]);
  check_no_foreign_files(dir);
  return true;
}

int64_t integer_field(const nlohmann::json& j, const char* key, const std::string& where) {
  LOOM_CHECK(j.is_object() && j.contains(key), where, ": missing \"", key, "\"");
  const nlohmann::json& v = j[key];
  LOOM_CHECK(v.is_number_integer() &&
                 !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())),
             where, ": \"", key, "\" must be an integer (found ", v.dump(), ")");
  return v.get<int64_t>();
}

// trainer_state.json: the step, which must match the folder's name, and the loader position.
TrainCheckpoint read_trainer_state(const std::string& dir) {
  const std::string path = dir + "/trainer_state.json";
  const nlohmann::json state = read_json_file(path, "trainer state");
  TrainCheckpoint ck;
  ck.step = integer_field(state, "step", path);
  const int64_t optimizer_step = integer_field(state, "optimizer_step", path);
  LOOM_CHECK(ck.step >= 1 && ck.step <= std::numeric_limits<int>::max(), path, ": step ", ck.step,
             " is out of range (a checkpoint is saved after step 1 or later)");
  LOOM_CHECK(optimizer_step >= 1 && optimizer_step <= ck.step, path, ": optimizer_step ", optimizer_step,
             " is not in [1, step ", ck.step, "] (a step makes at most one AdamW update)");
  const std::string name = folder_name(dir);
  const auto named = step_in_name(name, "step-", "");
  LOOM_CHECK(!named || *named == ck.step, path, ": step ", ck.step, " but the folder is ", name,
             " (the step was edited or the folder renamed)");
  ck.opt.step = int(optimizer_step);
  LOOM_CHECK(state.contains("loader"), path, ": missing \"loader\"");
  ck.loader = loader_state_from_json(state["loader"].dump(), path);
  return ck;
}

// A second moment is a mean of squares (read_f32 has checked every value finite): a negative one
// would turn AdamW's square root into NaN on the first step.
void check_second_moment(const std::vector<float>& v, const std::string& path) {
  for (size_t i = 0; i < v.size(); ++i)
    LOOM_CHECK(v[i] >= 0, path, ": exp_avg_sq[", i, "] is ", v[i], " (a mean of squares is >= 0)");
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const TrainCheckpoint& ck, const LoraLayout& layout,
                            const std::string& base_model, int keep, std::optional<int64_t> spared) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const fs::path final_dir = root / step_name(ck.step);
  const fs::path tmp = root / ("." + step_name(ck.step) + ".tmp");
  fs::remove_all(tmp);
  fs::create_directories(tmp);

  save_peft_adapter((tmp / "adapter").string(), layout, ck.params, base_model);
  const std::vector<int64_t> shape = {int64_t(ck.params.size())};
  write_safetensors((tmp / "optimizer.safetensors").string(),
                    {{"exp_avg", DType::F32, shape, ck.opt.m.data()}, {"exp_avg_sq", DType::F32, shape, ck.opt.v.data()}});
  nlohmann::json state = {{"step", ck.step},
                          {"optimizer_step", ck.opt.step},
                          {"loader", nlohmann::json::parse(to_json(ck.loader))},
                          {"checkpoint_format", kCheckpointFormat}};
  write_text_file(tmp / "trainer_state.json", state.dump(2) + "\n");
  write_checksums(tmp);

  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  remove_old_checkpoints(run_dir, ck.step, keep, spared);
  return final_dir.string();
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::string> out;
  for (const StepFolder& f : step_folders(run_dir)) out.push_back(f.path.string());
  return out;
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir, int64_t up_to_step) {
  std::optional<std::string> newest;
  for (const StepFolder& f : step_folders(run_dir))
    if (f.step <= up_to_step) newest = f.path.string();
  return newest;
}

std::vector<std::string> remove_unfinished_checkpoints(const std::string& run_dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(run_dir) / "checkpoints", ec)) {
    const std::string name = e.path().filename().string();
    if (!step_in_name(name, ".step-", ".tmp")) continue;
    std::error_code rm;
    fs::remove_all(e.path(), rm);
    LOOM_CHECK(!rm, "cannot remove ", e.path().string(), ", the unfinished save of an earlier run: ", rm.message());
    removed.push_back(name);
  }
  return removed;
}

TrainCheckpoint load_checkpoint(const std::string& dir, const LoraLayout& layout, std::string* warning) {
  LOOM_CHECK(fs::is_directory(dir), dir, " is not a checkpoint folder (expected <run>/checkpoints/step-N)");
  if (!verify_checksums(dir) && warning)
    *warning = cat(dir, " has no ", kChecksumsFile,
                   " (saved by a loom from before checkpoint checksums): its files cannot be verified; "
                   "resuming from it anyway");
  TrainCheckpoint ck = read_trainer_state(dir);
  ck.params = load_peft_adapter(dir + "/adapter", layout);
  const std::string bad = adapter_weight_problem(ck.params, layout);
  LOOM_CHECK(bad.empty(), dir, "/adapter/adapter_model.safetensors: ", bad);
  const std::string opt_path = dir + "/optimizer.safetensors";
  Checkpoint opt = Checkpoint::open(opt_path);
  ck.opt.m = opt.read_f32("exp_avg", {layout.total});
  ck.opt.v = opt.read_f32("exp_avg_sq", {layout.total});
  LOOM_CHECK(opt.names().size() == 2, opt_path, ": holds ", opt.names().size(),
             " tensors, expected 2 (exp_avg, exp_avg_sq)");
  check_second_moment(ck.opt.v, opt_path);
  return ck;
}

}  // namespace loom
