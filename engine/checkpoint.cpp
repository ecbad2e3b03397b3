#include "engine/checkpoint.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "ops/error.h"
#include "models/safetensors.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%06lld", static_cast<long long>(step));
  return buf;
}

// Complete checkpoints, oldest first (names sort by step thanks to the zero padding).
std::vector<fs::path> complete_checkpoints(const std::string& run_dir) {
  std::vector<fs::path> out;
  const fs::path root = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(root)) return out;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0 && fs::exists(e.path() / "trainer_state.json"))
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void write_text_file(const fs::path& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.close();
  LOOM_CHECK(f, "cannot write ", path.string(), " (disk full or no permission?)");
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const TrainCheckpoint& ck, const LoraLayout& layout,
                            const std::string& base_model, int keep) {
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
                          {"loader", nlohmann::json::parse(to_json(ck.loader))}};
  write_text_file(tmp / "trainer_state.json", state.dump(2) + "\n");

  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  auto all = complete_checkpoints(run_dir);
  for (size_t i = 0; i + size_t(std::max(keep, 1)) < all.size(); ++i) fs::remove_all(all[i]);
  return final_dir.string();
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  auto all = complete_checkpoints(run_dir);
  if (all.empty()) return std::nullopt;
  return all.back().string();
}

TrainCheckpoint load_checkpoint(const std::string& dir, const LoraLayout& layout) {
  TrainCheckpoint ck;
  const std::string state_path = dir + "/trainer_state.json";
  std::ifstream f(state_path);
  LOOM_CHECK(f, "cannot open ", state_path, " (not a loom checkpoint folder?)");
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(f);
    ck.step = state.at("step").get<int64_t>();
    ck.opt.step = state.at("optimizer_step").get<int>();
    ck.loader = loader_state_from_json(state.at("loader").dump(), state_path);
  } catch (const nlohmann::json::exception& e) {
    fail(state_path, ": ", e.what());
  }
  ck.params = load_peft_adapter(dir + "/adapter", layout);
  Checkpoint opt = Checkpoint::open(dir + "/optimizer.safetensors");
  ck.opt.m = opt.read_f32("exp_avg", {layout.total});
  ck.opt.v = opt.read_f32("exp_avg_sq", {layout.total});
  return ck;
}

}  // namespace loom
