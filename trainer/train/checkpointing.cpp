#include "trainer/train/checkpointing.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <stdexcept>

#include "checkpoints/hf_gpt2.h"
#include "common/usage_error.h"
#include "trainer/model/layout.h"
#include "trainer/parallel/tensor_parallel.h"
#include "trainer/train/paper_format.h"

namespace fs = std::filesystem;

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); i++) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

std::vector<int64_t> shape64(const std::vector<int>& s) { return std::vector<int64_t>(s.begin(), s.end()); }

// The full tensors of a flat buffer in the table's layout, named prefix + table name: a
// tensor-parallel shard is gathered over `tensor` (collective; null or one rank: local).
std::vector<ckpt::NamedTensor> views_of(const TensorTable& table, const float* flat, const std::string& prefix,
                                        Communicator* tensor) {
  std::vector<ckpt::NamedTensor> out;
  for (const auto& v : table.views()) {
    std::vector<float> full = tensor && tp::is_sharded(v)
                                  ? tp::gather(*tensor, v, flat)
                                  : std::vector<float>(flat + v.offset, flat + v.offset + v.size);
    out.push_back({prefix + v.name, shape64(tp::full_shape(v)), std::move(full)});
  }
  return out;
}

void set_views(const TensorTable& table, float* flat, const ckpt::SafetensorsFile& f, const std::string& prefix,
               const std::string& origin) {
  for (const auto& v : table.views()) {
    const ckpt::NamedTensor* t = f.find(prefix + v.name);
    if (!t) throw std::runtime_error(origin + ": missing tensor " + prefix + v.name);
    // files hold full tensors; a tensor-parallel rank takes its shard
    if (t->shape != shape64(tp::full_shape(v)))
      throw std::runtime_error(origin + ": tensor " + t->name + " has shape " + shape_str(t->shape) +
                               ", the model expects " + shape_str(shape64(tp::full_shape(v))));
    if (tp::is_sharded(v)) tp::extract(v, t->data.data(), flat + v.offset);
    else std::memcpy(flat + v.offset, t->data.data(), v.size * sizeof(float));
  }
  if (f.tensors.size() != table.views().size())
    for (const auto& t : f.tensors) {
      bool known = t.name.rfind(prefix, 0) == 0;
      if (known) try {
          table.at(t.name.substr(prefix.size()));
        } catch (const std::exception&) {
          known = false;
        }
      if (!known) throw std::runtime_error(origin + ": tensor " + t.name + " is not a parameter of this model");
    }
}

std::string hex64(uint64_t x) {
  char b[24];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)x);
  return b;
}

uint64_t parse_hex64(const std::string& s) { return std::stoull(s, nullptr, 16); }

}  // namespace

std::vector<ckpt::NamedTensor> model_tensors(Model& model) {
  std::vector<float> copy;
  return views_of(model.table(), model.params_host(copy), "", model.tensor_comm());
}

void set_model_tensors(Model& model, const std::vector<ckpt::NamedTensor>& tensors, const std::string& origin) {
  ckpt::SafetensorsFile f;
  f.tensors = tensors;
  std::vector<float> copy;
  float* params = model.params_host(copy);
  set_views(model.table(), params, f, "", origin);
  model.params_from_host(params);
}

std::string save_run_checkpoint(const config::Config& cfg, const std::string& resolved_yaml, Model& model,
                                DataParallel& dp, const LoopState& s, bool write) {
  // every rank takes part in the gathers, in the same order: the ZeRO-1 ranges of the moments
  // over the data group (into this tensor rank's layout), then every tensor over the tensor group
  const TensorTable& table = model.table();
  const AdamW& opt = dp.optimizer();
  std::vector<float> m_all(table.total(), 0.0f), v_all(table.total(), 0.0f);
  dp.gather_moments(m_all.data(), v_all.data());
  std::vector<ckpt::NamedTensor> weights = model_tensors(model);
  std::vector<ckpt::NamedTensor> moments = views_of(table, m_all.data(), "m.", model.tensor_comm());
  for (auto& t : views_of(table, v_all.data(), "v.", model.tensor_comm())) moments.push_back(std::move(t));
  if (!write) return cfg.log.dir + "/checkpoints/" + ckpt::step_dir_name(s.step);

  json::Object state{{"format_version", ckpt::kFormatVersion},
                     {"step", s.step},
                     {"tokens_seen", s.tokens_seen},
                     {"optimizer", json::Object{{"type", "adamw"}, {"t", opt.t()}}},
                     {"loader", json::Object{{"train_position", s.loader_position},
                                             {"batch_size", cfg.train.batch_size},
                                             {"seq_len", cfg.train.seq_len}}},
                     // Rng states are 64-bit: hex strings, since JSON numbers are doubles
                     {"rng", json::Object{{"init_seed", hex64(uint64_t(cfg.train.seed))}, {"sample", hex64(s.sample_rng)}}},
                     {"world_size", cfg.parallel.data * cfg.parallel.tensor},
                     {"layout", json::Object{{"data", cfg.parallel.data},
                                             {"tensor", cfg.parallel.tensor},
                                             {"optimizer_shards", 1},
                                             {"optimizer_sharding", "none: whole tensors by name, re-split on load"},
                                             {"tensors", "full: tensor-parallel shards gathered, re-split on load"}}},
                     {"bad_steps_in_a_row", s.bad_in_a_row},
                     {"time_s", s.time_s}};
  if (s.val_loss) state["val_loss"] = *s.val_loss;
  if (!s.unlogged_rows.empty()) state["unlogged_rows"] = s.unlogged_rows;

  std::vector<ckpt::File> files;
  files.push_back({"model.safetensors", ckpt::safetensors_bytes(weights, ckpt::DType::F32,
                                                                {{"format", "kvmtrain"}, {"content", "model"}})});
  files.push_back({"optimizer.safetensors", ckpt::safetensors_bytes(moments, ckpt::DType::F32,
                                                                    {{"format", "kvmtrain"}, {"content", "adamw"}})});
  files.push_back({"state.json", json::dump(state, 2) + "\n"});
  files.push_back({"config.yaml", resolved_yaml});
  json::Object extra{{"kind", "kvmtrain-checkpoint"}, {"tokens_seen", s.tokens_seen}};
  return ckpt::save(cfg.log.dir + "/checkpoints", s.step, files, extra);
}

LoopState restore_run_checkpoint(const std::string& dir, Model& model, DataParallel& dp) {
  const TensorTable& table = model.table();
  const std::string mpath = dir + "/model.safetensors", opath = dir + "/optimizer.safetensors";
  std::vector<float> copy;
  float* params = model.params_host(copy);
  set_views(table, params, ckpt::read_safetensors(mpath), "", mpath);
  model.params_from_host(params);
  ckpt::SafetensorsFile moments = ckpt::read_safetensors(opath);
  // set_views checks that the file holds exactly its prefix's tensors; m and v share the file
  ckpt::SafetensorsFile m, v;
  for (auto& t : moments.tensors) (t.name.rfind("m.", 0) == 0 ? m : v).tensors.push_back(std::move(t));
  // this tensor rank's shards of the whole moments, then dp keeps its ZeRO-1 range of them
  std::vector<float> m_all(table.total(), 0.0f), v_all(table.total(), 0.0f);
  set_views(table, m_all.data(), m, "m.", opath);
  set_views(table, v_all.data(), v, "v.", opath);

  const std::string spath = dir + "/state.json";
  try {
    json::Value s = json::parse(ckpt::read(dir, "state.json"));
    // counts are never negative (issue 21: step -3 and a negative data position were taken)
    auto count = [](const json::Value& v, const char* key) {
      const int64_t x = v.at(key).integer();
      if (x < 0) throw std::runtime_error(std::string(key) + " = " + std::to_string(x) + ": expected at least 0");
      return x;
    };
    LoopState st;
    st.step = count(s, "step");
    st.tokens_seen = uint64_t(count(s, "tokens_seen"));
    st.loader_position = uint64_t(count(s.at("loader"), "train_position"));
    st.sample_rng = parse_hex64(s.at("rng").at("sample").string());
    st.bad_in_a_row = int(count(s, "bad_steps_in_a_row"));
    st.time_s = s.at("time_s").number();
    if (!(st.time_s >= 0)) throw std::runtime_error("time_s: expected a number at least 0");
    if (s.contains("val_loss")) st.val_loss = s.at("val_loss").number();
    if (s.contains("unlogged_rows"))
      for (const json::Value& row : s.at("unlogged_rows").array()) {
        if (!row.is_object() || row.at("step").integer() < 1 || row.at("step").integer() > st.step)
          throw std::runtime_error("unlogged_rows: expected log rows of steps 1.." + std::to_string(st.step));
        st.unlogged_rows.push_back(row);
      }
    dp.load_moments(m_all.data(), v_all.data(), int(count(s.at("optimizer"), "t")));
    return st;
  } catch (const std::exception& e) {
    throw std::runtime_error(spath + ": " + e.what());
  }
}

config::Config checkpoint_config(const std::string& dir) {
  if (paper::is_paper_dir(dir)) return paper::dir_config(dir);
  return config::load(dir + "/config.yaml");
}

std::string resolve_checkpoint(const std::string& ckpt_or_run, bool best) {
  if (paper::is_paper_dir(ckpt_or_run)) {
    if (best) throw UsageError("--best: " + ckpt_or_run + " is a model in the paper's format, not a run directory");
    return ckpt_or_run;
  }
  std::vector<std::string> warnings;
  std::string dir = ckpt::resolve(ckpt_or_run, best, warnings);
  for (const auto& w : warnings) std::fprintf(stderr, "kvmtrain: warning: %s\n", w.c_str());
  return dir;
}

std::vector<ckpt::NamedTensor> checkpoint_tensors(const std::string& dir, const config::ModelConfig& m) {
  const std::string file = dir + "/model.safetensors";
  if (!paper::is_paper_dir(dir)) return ckpt::read_safetensors(file).tensors;
  std::vector<std::string> missing;
  std::vector<ckpt::NamedTensor> ours = paper::tensors_from_paper(m, ckpt::read_safetensors(file).tensors, file, missing);
  // what kvmtrain has and the paper's config switched off: kvmtrain's initialisation, unused
  if (!missing.empty()) {
    const ModelLayout layout = declare_layout(m, 1, 0);
    std::vector<float> init(layout.table.total());
    init_params(init.data(), layout, m, uint64_t(config::TrainConfig{}.seed));
    for (const std::string& name : missing) {
      const TensorView& v = layout.table.at(name);
      const auto first = init.begin() + std::ptrdiff_t(v.offset);
      ours.push_back({name, shape64(v.shape), std::vector<float>(first, first + std::ptrdiff_t(v.size))});
    }
  }
  return ours;
}

namespace {

// The weights of a directory in the paper's format, into a model that should be the one its
// config.json maps to (a warning names each key that differs).
void load_paper_weights(const std::string& dir, Model& model) {
  const config::ModelConfig& m = model.cfg();
  config::Config run;
  run.model = m;
  std::string differ;
  std::function<void(const std::string&, const json::Value&, const json::Value&)> compare =
      [&](const std::string& key, const json::Value& mine, const json::Value& theirs) {
        if (theirs.is_object()) {
          for (const auto& [k, v] : theirs.object()) compare(key + "." + k, mine.at(k), v);
        } else if (key != "model.max_seq_len" && key != "model.init" && key != "model.zero_init_out" &&
                   key != "model.mup_base_dim" && json::dump(mine) != json::dump(theirs)) {
          differ += (differ.empty() ? "" : ", ") + key + " " + json::dump(mine) + " (the paper's " + json::dump(theirs) + ")";
        }
      };
  compare("model", config::to_json(run).at("model"), config::to_json(paper::dir_config(dir)).at("model"));
  if (!differ.empty())
    std::fprintf(stderr, "kvmtrain: warning: %s: this model differs from its config.json: %s\n", dir.c_str(), differ.c_str());

  set_model_tensors(model, checkpoint_tensors(dir, m), dir + "/model.safetensors");
}

}  // namespace

void load_weights(const std::string& path, Model& model) {
  if (paper::is_paper_dir(path)) return load_paper_weights(path, model);
  const bool is_export = fs::exists(fs::path(path) / "model.safetensors") && !fs::exists(fs::path(path) / "manifest.json");
  if (!is_export) {
    std::string dir = resolve_checkpoint(path, false);
    set_model_tensors(model, ckpt::read_safetensors(dir + "/model.safetensors").tensors, dir + "/model.safetensors");
    return;
  }
  const std::string file = path + "/model.safetensors";
  ckpt::SafetensorsFile f = ckpt::read_safetensors(file);
  const int64_t Vp = model.cfg().padded_vocab_size;
  std::vector<ckpt::NamedTensor> ours;
  try {
    ours = ckpt::has_hf_gpt2_names(f.tensors) ? ckpt::gpt2_from_hf(f.tensors, Vp) : ckpt::restore_vocab_padding(f.tensors, Vp);
  } catch (const std::exception& e) {
    throw std::runtime_error(file + ": " + e.what());
  }
  // Hugging Face files of a tied model may carry lm_head.weight, a copy of wte: the tie wins
  if (model.cfg().tie_embeddings)
    std::erase_if(ours, [](const ckpt::NamedTensor& t) { return t.name == "lm_head.weight"; });
  set_model_tensors(model, ours, file);
}

bool is_pure_gpt2(const config::ModelConfig& m) {
  bool all_attn = true;
  for (config::Mixer x : m.mixers) all_attn = all_attn && x == config::Mixer::attn;
  return all_attn && m.pos == config::Pos::learned && m.mlp == config::Mlp::gelu && !m.qk_norm && !m.emb_norm &&
         !m.token_shift && !m.qkv_shift && !m.mlp_shift && !m.value_residual && m.residual_scale == 1.0 && m.bias &&
         !m.softmax_over_padding;
}
