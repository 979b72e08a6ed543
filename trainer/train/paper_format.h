#pragma once
// The paper's checkpoint format (recursal/KVM-paper's RWKV7BackboneForCausalLM, a Hugging Face
// directory with config.json of model_type "rwkv7backbone" and model.safetensors), both ways, in
// one place: its config keys <-> config::ModelConfig, its tensor names and shapes <-> the model's
// layout names. The mapping and where kvmtrain deliberately differs: docs/paper-mapping.md.
//
// Here, not in checkpoints/, because the mapping needs the config schema (trainer/config), which
// the checkpoint room may not include.
#include <string>
#include <utility>
#include <vector>

#include "checkpoints/safetensors.h"
#include "common/json.h"
#include "trainer/config/config.h"

namespace paper {

// The paper's training length (its base.yaml's sequence_length): the model.max_seq_len an
// imported model gets, since the paper's config has no such key.
constexpr int kSeqLen = 8192;

// Every key of the paper's MixerConfigDataclass (RWKV7BackboneConfigDataclass's included) with
// its default, in the dataclass's order.
const std::vector<std::pair<std::string, json::Value>>& dataclass_defaults();

// True when `dir` holds a config.json whose model_type is "rwkv7backbone".
bool is_paper_dir(const std::string& dir);

// The paper's config (config.json's object; absent keys take the dataclass defaults) as
// kvmtrain's model config. Keys of mixers the model does not use are ignored; anything kvmtrain
// cannot represent throws UsageError in one line, "<origin>: <key>: ...", naming the paper's key.
config::ModelConfig to_model(const json::Object& cfg, const std::string& origin);

// kvmtrain's model as the paper's config.json: model_type, architectures, every dataclass key
// (from the mapping, the defaults for the rest) and the PretrainedConfig basics. Throws UsageError
// naming the kvmtrain key for a model the paper's code cannot express.
json::Object from_model(const config::ModelConfig& m, config::Tokenizer tokenizer);

// The model's tensors (layout names, full shapes, padded vocabulary) as the paper's: names,
// shapes, fused q|k|v split, and exactly the set the paper's modules have for this config.
std::vector<ckpt::NamedTensor> tensors_to_paper(const config::ModelConfig& m, const std::vector<ckpt::NamedTensor>& ours);

// The paper's tensors under layout names and shapes. Every tensor the paper has for this config
// must be there with its shape (a zero x_v, which kvmtrain has no use for, is accepted and
// dropped); errors name `origin` and the tensor. `missing` gets the layout names kvmtrain has and
// the paper lacks (the KVM gate without merge gates, the temperatures without head_temps): the
// caller fills them from kvmtrain's initialisation, they are unused by the model.
std::vector<ckpt::NamedTensor> tensors_from_paper(const config::ModelConfig& m, const std::vector<ckpt::NamedTensor>& theirs,
                                                  const std::string& origin, std::vector<std::string>& missing);

// A paper directory's config as a run config: the model from to_model, data.tokenizer gpt2, the
// rest at their defaults.
config::Config dir_config(const std::string& dir);

}  // namespace paper
