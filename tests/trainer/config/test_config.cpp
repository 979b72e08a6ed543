// The config schema: every kind of error names where it came from, the key and what was expected.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <ostream>
#include <sstream>

#include "common/usage_error.h"
#include "trainer/config/config.h"

namespace fs = std::filesystem;

namespace config {
// gtest prints a choice by its name
template <Choice E>
std::ostream& operator<<(std::ostream& os, E e) {
  return os << to_string(e);
}
}  // namespace config

namespace {

// The one-line message of the UsageError that loading `yaml` raises ("" when it loads).
std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    config::load_string(yaml, "t.yaml", overrides);
  } catch (const UsageError& e) {
    std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << "error spans lines: " << m;
    return m;
  }
  return "";
}

fs::path write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
  return p;
}

// A choice key of the schema, for the tests that walk every value of every one.
struct ChoiceKey {
  std::string key;
  std::vector<std::string> names;                          // its values, as configs spell them
  std::string expected;                                    // what its errors say it takes
  std::function<std::string(const config::Config&)> name;  // its value in a loaded config, spelled
  std::map<std::string, std::vector<std::string>> needs;   // --sets a value needs beside it
};

// get: the key's enumerator in a config (the first, for a list).
template <class Get>
ChoiceKey choice_key(const std::string& key, Get get, std::map<std::string, std::vector<std::string>> needs = {},
                     const std::string& expected_prefix = "one of ") {
  using E = decltype(get(config::Config{}));
  ChoiceKey k{key, {}, expected_prefix, [get](const config::Config& c) { return config::to_string(get(c)); },
              std::move(needs)};
  for (std::string_view name : names(E{})) {
    k.expected += (k.names.empty() ? "" : " | ") + std::string(name);
    k.names.emplace_back(name);
  }
  return k;
}

std::vector<ChoiceKey> choice_keys() {
  using C = const config::Config&;
  return {
      choice_key("model.pos", [](C c) { return c.model.pos; }),
      choice_key("model.mlp", [](C c) { return c.model.mlp; }),
      choice_key("model.mixers", [](C c) { return c.model.mixers.at(0); }, {{"bswa", {"model.kvm.sink=0"}}},
                 "a non-empty list of "),
      choice_key("model.rope_variant", [](C c) { return c.model.rope_variant; }),
      choice_key("model.init", [](C c) { return c.model.init; }),
      choice_key("model.value_residual_mode", [](C c) { return c.model.value_residual_mode; }),
      choice_key("model.value_residual_anchor", [](C c) { return c.model.value_residual_anchor; }),
      choice_key("model.kvm.budget", [](C c) { return c.model.kvm.budget; }),
      choice_key("data.tokenizer", [](C c) { return c.data.tokenizer; }, {{"byte", {"model.vocab_size=257"}}, {"mqar", {"model.vocab_size=256"}}}),
      choice_key("train.device", [](C c) { return c.train.device; }),
      choice_key("train.precision", [](C c) { return c.train.precision; }),
      choice_key("train.attention_backend", [](C c) { return c.train.attention_backend; },
                 {{"cudnn", {"train.device=cuda", "train.precision=bf16"}}}),
      choice_key("train.lr_schedule", [](C c) { return c.train.lr_schedule; }),
      choice_key("train.weight_decay_schedule", [](C c) { return c.train.weight_decay_schedule; }),
      choice_key("train.recompute", [](C c) { return c.train.recompute; }),
  };
}

// Every enumerator of E is spelled by a name of its own that parses back to it.
template <config::Choice E>
void expect_names_round_trip() {
  const auto names = config::names(E{});
  for (size_t i = 0; i < names.size(); i++) {
    const E e = E(i);
    EXPECT_EQ(config::to_string(e), names[i]);
    EXPECT_EQ(config::parse<E>(config::to_string(e)), e) << names[i];
  }
  EXPECT_EQ(config::parse<E>("no such name"), std::nullopt);
}

}  // namespace

TEST(Config, DefaultsAndResolvedPadding) {
  auto c = config::load_string("model: {vocab_size: 50257}\n", "t.yaml");
  EXPECT_EQ(c.model.padded_vocab_size, 50304);
  auto b = config::load_string("model: {vocab_size: 257}\ndata: {tokenizer: byte}\n", "t.yaml");
  EXPECT_EQ(b.model.padded_vocab_size, 384);
  EXPECT_EQ(c.train.device, config::Device::cpu);
}

TEST(Config, UnknownKeyNamesFileLineAndSuggests) {
  std::string m = error_of("model:\n  n_layer: 2\n  n_layr: 3\n");
  EXPECT_NE(m.find("t.yaml:3"), std::string::npos) << m;
  EXPECT_NE(m.find("unknown key 'model.n_layr'"), std::string::npos) << m;
  EXPECT_NE(m.find("did you mean model.n_layer"), std::string::npos) << m;
  EXPECT_NE(error_of("modle: {n_layer: 2}\n").find("unknown key 'modle'"), std::string::npos);
}

TEST(Config, WrongTypeNamesKeyAndExpectation) {
  std::string m = error_of("train:\n  lr: fast\n");
  EXPECT_NE(m.find("t.yaml:2: train.lr: expected a number"), std::string::npos) << m;
  EXPECT_NE(m.find("got 'fast'"), std::string::npos) << m;
  EXPECT_NE(error_of("model: {n_layer: 2.5}\n").find("model.n_layer: expected an integer"), std::string::npos);
  EXPECT_NE(error_of("model: {tie_embeddings: maybe}\n").find("expected true or false"), std::string::npos);
  EXPECT_NE(error_of("train: {lr_schedule: step}\n").find("expected one of cosine | linear | constant"),
            std::string::npos);
  EXPECT_NE(error_of("model: 3\n").find("model: expected a mapping"), std::string::npos);
  EXPECT_NE(error_of("data: {train: [{path: a, wieght: 2}]}\n").find("unknown field 'wieght'"), std::string::npos);
}

TEST(Config, OutOfRange) {
  EXPECT_NE(error_of("model: {n_layer: 0}\n").find("model.n_layer: expected an integer in [1,"), std::string::npos);
  EXPECT_NE(error_of("train: {lr: -1}\n").find("train.lr: expected a number in (0, 10]"), std::string::npos);
  EXPECT_NE(error_of("train: {lr: 0}\n").find("train.lr"), std::string::npos);
  EXPECT_NE(error_of("data: {train: [{path: a, weight: 0}]}\n").find("weight > 0"), std::string::npos);
}

TEST(Config, CrossFieldChecksNameTheKey) {
  std::string m = error_of("model: {d_model: 100, n_head: 3}\n");
  EXPECT_NE(m.find("t.yaml:1: model.d_model: expected a multiple of model.n_head"), std::string::npos) << m;
  m = error_of("model: {max_seq_len: 32}\ntrain: {seq_len: 64}\n");
  EXPECT_NE(m.find("t.yaml:2: train.seq_len: expected at most model.max_seq_len (32)"), std::string::npos) << m;
  EXPECT_NE(error_of("model: {vocab_size: 300}\n").find("expected 50257 for data.tokenizer gpt2"), std::string::npos);
  // mqar takes the vocabulary its shards were prepared with: any even size >= 4
  EXPECT_EQ(error_of("model: {vocab_size: 16}\ndata: {tokenizer: mqar}\n"), "");
  EXPECT_NE(error_of("model: {vocab_size: 17}\ndata: {tokenizer: mqar}\n")
                .find("t.yaml:1: model.vocab_size: expected an even number >= 4"),
            std::string::npos);
  EXPECT_NE(error_of("model: {padded_vocab_size: 100}\n").find("expected at least model.vocab_size"), std::string::npos);
}

TEST(Config, CudnnAttentionNeedsCudaBf16AndAHeadDimItTakes) {
  const auto npos = std::string::npos;
  EXPECT_EQ(config::load_string("", "t.yaml").train.attention_backend, config::AttentionBackend::native);
  const std::string cudnn = "train: {device: cuda, precision: bf16, attention_backend: cudnn}\n";
  EXPECT_EQ(error_of(cudnn), "");
  EXPECT_EQ(config::load_string(cudnn, "t.yaml").train.attention_backend, config::AttentionBackend::cudnn);

  std::string m = error_of("train: {precision: bf16, attention_backend: cudnn}\n");
  EXPECT_NE(m.find("t.yaml:1: train.attention_backend: cudnn needs train.device: cuda"), npos) << m;
  m = error_of("train: {device: cuda, attention_backend: cudnn}\n");
  EXPECT_NE(m.find("t.yaml:1: train.attention_backend: cudnn needs train.precision: bf16 (cuDNN's fused attention "
                   "takes bf16 inputs)"),
            npos)
      << m;
  m = error_of("", {"train.attention_backend=cudnn"});
  EXPECT_NE(m.find("--set train.attention_backend=cudnn: train.attention_backend: cudnn needs train.device: cuda"),
            npos)
      << m;
  m = error_of("train: {attention_backend: flash}\n");
  EXPECT_NE(m.find("t.yaml:1: train.attention_backend: expected one of native | cudnn, got 'flash'"), npos) << m;

  // head dim 65 (not a multiple of 8) and 256 (over 128); no check when no layer attends
  m = error_of("model: {d_model: 780, n_head: 12}\n" + cudnn);
  EXPECT_NE(m.find("train.attention_backend: cudnn needs a head dim (model.d_model / model.n_head) that is a "
                   "multiple of 8 and at most 128, got 65"),
            npos)
      << m;
  EXPECT_NE(error_of("model: {d_model: 768, n_head: 3}\n" + cudnn).find("at most 128, got 256"), npos);
  EXPECT_EQ(error_of("model: {d_model: 780, n_head: 12, mixers: [kvm]}\n" + cudnn), "");
}

TEST(Config, EveryChoiceNameRoundTrips) {
  expect_names_round_trip<config::Pos>();
  expect_names_round_trip<config::Mlp>();
  expect_names_round_trip<config::Mixer>();
  expect_names_round_trip<config::KvmBudget>();
  expect_names_round_trip<config::Tokenizer>();
  expect_names_round_trip<config::Device>();
  expect_names_round_trip<config::Precision>();
  expect_names_round_trip<config::AttentionBackend>();
  expect_names_round_trip<config::LrSchedule>();
  expect_names_round_trip<config::WeightDecaySchedule>();
  expect_names_round_trip<config::Recompute>();
  expect_names_round_trip<config::RopeVariant>();
  expect_names_round_trip<config::ModelInit>();
  expect_names_round_trip<config::ValueResidualMode>();
  expect_names_round_trip<config::ValueResidualAnchor>();
}

// Each value of each choice key: --set loads it, to_yaml writes it, and the YAML loads back to
// the same config.
TEST(Config, EveryChoiceValueSurvivesToYamlAndBack) {
  for (const auto& k : choice_keys()) {
    for (const auto& name : k.names) {
      SCOPED_TRACE(k.key + "=" + name);
      std::vector<std::string> sets = k.needs.contains(name) ? k.needs.at(name) : std::vector<std::string>{};
      sets.push_back(k.key + "=" + name);
      const config::Config c = config::load_string("", "t.yaml", sets);
      EXPECT_EQ(k.name(c), name);
      const std::string yaml = config::to_yaml(c);
      const config::Config again = config::load_string(yaml, "resolved.yaml");
      EXPECT_EQ(k.name(again), name);
      EXPECT_EQ(config::to_yaml(again), yaml);
    }
  }
  const config::Config hybrid = config::load_string("model: {mixers: [swa, kvm, attn, kvm]}\n", "t.yaml");
  const std::vector<config::Mixer> mixers{config::Mixer::swa, config::Mixer::kvm, config::Mixer::attn,
                                          config::Mixer::kvm};
  EXPECT_EQ(hybrid.model.mixers, mixers);
  EXPECT_NE(config::to_yaml(hybrid).find("mixers: [swa, kvm, attn, kvm]\n"), std::string::npos);
  EXPECT_EQ(config::load_string(config::to_yaml(hybrid), "resolved.yaml").model.mixers, mixers);
}

TEST(Config, AnUnknownChoiceNamesTheKeyAndTheValuesItTakes) {
  for (const auto& k : choice_keys()) {
    EXPECT_EQ(error_of("", {k.key + "=bogus"}),
              "--set " + k.key + "=bogus: " + k.key + ": expected " + k.expected + ", got 'bogus'");
    // a list is a value of model.mixers only
    EXPECT_EQ(error_of("", {k.key + "=[" + k.names[0] + "]"}).empty(), k.key == "model.mixers") << k.key;
  }
  EXPECT_EQ(error_of("model:\n  mixers: [swa, mamba]\n"),
            "t.yaml:2: model.mixers: expected a non-empty list of attn | swa | kvm | bswa, got '[swa, mamba]'");
  EXPECT_EQ(error_of("model: {mixers: []}\n"),
            "t.yaml:1: model.mixers: expected a non-empty list of attn | swa | kvm | bswa, got '[]'");
  EXPECT_EQ(error_of("model: {kvm: {budget: sqrt}}\n"),
            "t.yaml:1: model.kvm.budget: expected one of fixed | power_law | saturating, got 'sqrt'");
}

TEST(Config, InvalidYamlNamesLine) {
  std::string m = error_of("model:\n  n_layer: [1, 2\n");
  EXPECT_NE(m.find("t.yaml:"), std::string::npos) << m;
  EXPECT_NE(m.find("invalid YAML"), std::string::npos) << m;
}

TEST(Config, SetOverridesParseAsYaml) {
  auto c = config::load_string("train: {lr: 1e-3}\n", "t.yaml",
                               {"train.lr=3e-4", "data.train=[{path: a, weight: 2}, b]", "model={n_layer: 3}"});
  EXPECT_DOUBLE_EQ(c.train.lr, 3e-4);
  ASSERT_EQ(c.data.train.size(), 2u);
  EXPECT_EQ(c.data.train[0].path, "a");
  EXPECT_DOUBLE_EQ(c.data.train[0].weight, 2.0);
  EXPECT_EQ(c.data.train[1].path, "b");
  EXPECT_EQ(c.model.n_layer, 3);
  EXPECT_NE(error_of("", {"train.lr=abc"}).find("--set train.lr=abc: train.lr: expected a number"), std::string::npos);
  EXPECT_NE(error_of("", {"train.lrr=1"}).find("--set train.lrr=1: unknown key 'train.lrr'"), std::string::npos);
  EXPECT_NE(error_of("", {"train.lr"}).find("expected KEY=VALUE"), std::string::npos);
  EXPECT_NE(error_of("", {"train.lr=[1"}).find("not valid YAML"), std::string::npos);
}

TEST(Config, BaseInheritanceAndErrorsInTheBaseNameTheBase) {
  fs::path dir = fs::temp_directory_path() / "kvm_test_config";
  fs::remove_all(dir);
  write(dir / "sub/base.yaml", "model: {n_layer: 4, n_head: 2, d_model: 64}\ntrain: {lr: 1e-3, steps: 7}\n");
  auto child = write(dir / "child.yaml", "base: sub/base.yaml\ntrain: {lr: 2e-3}\n");
  auto c = config::load(child.string());
  EXPECT_EQ(c.model.n_layer, 4);
  EXPECT_EQ(c.train.steps, 7);
  EXPECT_DOUBLE_EQ(c.train.lr, 2e-3);

  write(dir / "bad_base.yaml", "train:\n  stepz: 3\n");
  auto bad = write(dir / "bad_child.yaml", "base: bad_base.yaml\n");
  try {
    config::load(bad.string());
    FAIL() << "expected an error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("bad_base.yaml:2: unknown key 'train.stepz'"), std::string::npos) << e.what();
  }
  auto cyc = write(dir / "cycle.yaml", "base: cycle.yaml\n");
  EXPECT_THROW(config::load(cyc.string()), UsageError);
  try {
    config::load((dir / "missing.yaml").string());
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("config file not found"), std::string::npos);
  }
  fs::remove_all(dir);
}

TEST(Config, ResolvedYamlRoundTrips) {
  auto c = config::load_string("model: {n_layer: 3}\ndata: {train: [{path: x, weight: 0.5}]}\n", "t.yaml");
  auto again = config::load_string(config::to_yaml(c), "resolved.yaml");
  EXPECT_EQ(config::to_yaml(again), config::to_yaml(c));
  EXPECT_EQ(again.model.n_layer, 3);
  EXPECT_EQ(again.model.padded_vocab_size, 50304);
  EXPECT_DOUBLE_EQ(again.data.train[0].weight, 0.5);
}

TEST(Config, JsonHoldsEveryKeyTypedAndNestedAsTheYaml) {
  auto c = config::load_string("model: {n_layer: 3, mixers: [swa, kvm], rope_base: 500000, kvm: {chunk: 16}}\n"
                               "data: {train: [{path: x, weight: 0.5}]}\n", "t.yaml");
  const json::Value j = config::to_json(c);
  const json::Value& m = j.at("model");
  EXPECT_EQ(m.at("n_layer").integer(), 3);
  EXPECT_EQ(m.at("padded_vocab_size").integer(), 50304);
  EXPECT_DOUBLE_EQ(m.at("rope_base").number(), 500000);
  EXPECT_EQ(m.at("pos").string(), "learned");
  EXPECT_TRUE(m.at("tie_embeddings").boolean());
  ASSERT_EQ(m.at("mixers").array().size(), 2u);
  EXPECT_EQ(m.at("mixers").array()[1].string(), "kvm");
  EXPECT_EQ(m.at("kvm").at("chunk").integer(), 16);
  EXPECT_EQ(j.at("data").at("train").array()[0].at("path").string(), "x");
  EXPECT_DOUBLE_EQ(j.at("data").at("train").array()[0].at("weight").number(), 0.5);
  EXPECT_DOUBLE_EQ(j.at("train").at("lr").number(), 3e-4);
  EXPECT_EQ(j.at("train").at("seed").integer(), 1337);
  // every key of the schema, at its dotted path
  std::istringstream reference(config::reference_markdown());
  int keys = 0;
  for (std::string line; std::getline(reference, line);) {
    if (line.rfind("| `", 0) != 0) continue;
    const std::string key = line.substr(3, line.find('`', 3) - 3);
    const json::Value* v = &j;
    std::istringstream parts(key);
    for (std::string part; std::getline(parts, part, '.');) {
      ASSERT_TRUE(v->is_object() && v->contains(part)) << key;
      v = &v->at(part);
    }
    EXPECT_FALSE(v->is_object()) << key;
    keys++;
  }
  EXPECT_GT(keys, 50);
}

TEST(Config, EveryShippedConfigLoads) {
  fs::path configs = fs::path(KVMTRAIN_SOURCE_DIR) / "configs";
  int n = 0;
  for (const auto& e : fs::recursive_directory_iterator(configs)) {
    if (e.path().extension() != ".yaml") continue;
    EXPECT_NO_THROW(config::load(e.path().string())) << e.path();
    n++;
  }
  EXPECT_GT(n, 0);
}

TEST(Config, ReadmeCarriesTheCurrentKeyReference) {
  std::ifstream in(fs::path(KVMTRAIN_SOURCE_DIR) / "README.md");
  std::string readme((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(readme.find(config::reference_markdown()), std::string::npos)
      << "README.md's config reference is stale: paste the output of `kvmtrain train --config-keys`";
}
