// kvmtrain export: a checkpoint's weights in the files inference engines read (safetensors,
// config.json, the tokenizer as Hugging Face's vocab.json and merges.txt). docs/checkpoint-format.md
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "common/dir_lock.h"
#include "common/file_io.h"
#include "checkpoints/hf_gpt2.h"
#include "checkpoints/safetensors.h"
#include "trainer/train/checkpointing.h"
#include "trainer/train/paper_format.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"

// GPT-2's vocabulary files, compiled in: encoder.json by data/tokenizer_gpt2.cpp, vocab.bpe here
// (HF's merges.txt is the same file), so export runs from any directory.
extern "C" const char kvm_gpt2_encoder_json[];
extern "C" const char kvm_gpt2_encoder_json_end[];
asm(".section .rodata\n"
    ".global kvm_gpt2_vocab_bpe\n"
    ".hidden kvm_gpt2_vocab_bpe\n"
    "kvm_gpt2_vocab_bpe:\n"
    ".incbin \"" KVMTRAIN_SOURCE_DIR "/data/gpt2/vocab.bpe\"\n"
    ".global kvm_gpt2_vocab_bpe_end\n"
    ".hidden kvm_gpt2_vocab_bpe_end\n"
    "kvm_gpt2_vocab_bpe_end:\n"
    ".previous\n");
extern "C" const char kvm_gpt2_vocab_bpe[];
extern "C" const char kvm_gpt2_vocab_bpe_end[];

namespace fs = std::filesystem;

namespace {

json::Object hf_gpt2_config(const config::ModelConfig& m, const std::string& dtype) {
  return json::Object{{"architectures", json::Array{"GPT2LMHeadModel"}},
                      {"model_type", "gpt2"},
                      {"activation_function", "gelu_new"},
                      {"n_embd", m.d_model},
                      {"n_head", m.n_head},
                      {"n_layer", m.n_layer},
                      {"n_positions", m.max_seq_len},
                      {"n_ctx", m.max_seq_len},
                      {"n_inner", nullptr},
                      {"vocab_size", m.vocab_size},
                      {"layer_norm_epsilon", 1e-5},
                      {"initializer_range", 0.02},
                      // kvmtrain trains without dropout
                      {"attn_pdrop", 0.0},
                      {"embd_pdrop", 0.0},
                      {"resid_pdrop", 0.0},
                      {"scale_attn_weights", true},
                      {"tie_word_embeddings", m.tie_embeddings},
                      {"bos_token_id", m.vocab_size - 1},  // the EOT id of both tokenizers
                      {"eos_token_id", m.vocab_size - 1},
                      {"torch_dtype", dtype == "bf16" ? "bfloat16" : "float32"}};
}

// Model keys that say how the weights were trained, not what they are: the vocabulary padding
// (the export drops it) and how the output projections started.
const char* const kTrainingOnlyKeys[] = {"padded_vocab_size", "zero_init_out"};

// Backbone and KVM models: every model key of the config schema under its own name, and this
// format's own keys (docs/checkpoint-format.md).
json::Object backbone_config(const config::Config& cfg, const std::string& dtype) {
  json::Object out = config::to_json(cfg).at("model").object();
  for (const char* key : kTrainingOnlyKeys) out.erase(key);
  out["architectures"] = json::Array{"KvmtrainForCausalLM"};
  out["model_type"] = "kvmtrain";
  out["format_version"] = 1;
  out["layer_norm_epsilon"] = 1e-5;
  out["tokenizer"] = config::to_string(cfg.data.tokenizer);
  out["torch_dtype"] = dtype == "bf16" ? "bfloat16" : "float32";
  return out;
}

// Under a temporary name, fsynced, then renamed: a reader never sees a partly written file.
void write(const fs::path& dir, const std::string& name, const std::string& bytes) {
  const fs::path tmp = dir / (".tmp-" + name + "-" + std::to_string(::getpid()));
  ckpt::write_file_synced(tmp.string(), bytes);
  fs::rename(tmp, dir / name);
}

}  // namespace

int cmd_export(int argc, char** argv) {
  cli::Args args("export", "Write a checkpoint's weights for inference engines: model.safetensors, config.json and "
                           "the tokenizer (vocab.json, merges.txt). A pure GPT-2 uses Hugging Face's GPT2LMHeadModel "
                           "names and layouts; backbone/KVM models use kvmtrain's (docs/checkpoint-format.md); "
                           "--format kvm-paper writes the paper's RWKV7BackboneForCausalLM (docs/paper-mapping.md).");
  args.positional("CKPT_OR_RUN", "a checkpoint directory, a run directory (its newest complete checkpoint), or a model "
                                 "in the paper's format");
  args.option("format", "FORMAT", "output format: safetensors (kvmtrain's or Hugging Face GPT-2's names) or kvm-paper "
                                  "(the paper's config.json and names)", "safetensors");
  args.option("output", "DIR", "output directory (created)");
  args.option("dtype", "fp32|bf16", "stored dtype; bf16 rounds to nearest even", "fp32");
  args.flag("best", "with a run directory: the checkpoint with the best validation loss (best.json)");
  args.parse(argc, argv, 2);
  const std::string format = args.str("format");
  if (format != "safetensors" && format != "kvm-paper")
    throw UsageError("export: --format " + format + " is not supported (expected safetensors or kvm-paper)");
  const std::string dtype = args.str("dtype");
  if (dtype != "fp32" && dtype != "bf16") throw UsageError("export: --dtype " + dtype + " (expected fp32 or bf16)");
  if (!args.has("output")) throw UsageError("export: missing --output DIR");

  const std::string dir = resolve_checkpoint(args.str("CKPT_OR_RUN"), args.has("best"));
  const config::Config cfg = checkpoint_config(dir);
  const auto& m = cfg.model;
  std::vector<ckpt::NamedTensor> ours = checkpoint_tensors(dir, m);
  const bool paper = format == "kvm-paper", gpt2 = !paper && is_pure_gpt2(m);
  std::vector<ckpt::NamedTensor> out;
  json::Object config;
  if (paper) {
    config = paper::from_model(m, cfg.data.tokenizer);  // refuses a model the paper cannot express
    config["torch_dtype"] = dtype == "bf16" ? "bfloat16" : "float32";
    out = paper::tensors_to_paper(m, ours);  // the padded vocabulary rows included: the paper's vocab_size
  } else {
    out = gpt2 ? ckpt::gpt2_to_hf(ours, m.vocab_size) : ckpt::drop_vocab_padding(ours, m.vocab_size);
    config = gpt2 ? hf_gpt2_config(m, dtype) : backbone_config(cfg, dtype);
  }

  const fs::path od = args.str("output");
  // one writer at a time, as in a run directory (a training run's own log.dir included)
  const DirLock lock(od.string(), "export --output");
  write(od, "model.safetensors",
        ckpt::safetensors_bytes(out, dtype == "bf16" ? ckpt::DType::BF16 : ckpt::DType::F32,
                                {{"format", "pt"}, {"source", "kvmtrain " + dir}}));
  write(od, "config.json", json::dump(config, 2) + "\n");
  switch (cfg.data.tokenizer) {
    case config::Tokenizer::gpt2: {
      write(od, "vocab.json", std::string(kvm_gpt2_encoder_json, kvm_gpt2_encoder_json_end));
      write(od, "merges.txt", std::string(kvm_gpt2_vocab_bpe, kvm_gpt2_vocab_bpe_end));
      json::Object tok{{"tokenizer_class", "GPT2Tokenizer"}, {"model_max_length", m.max_seq_len},
                       {"bos_token", "<|endoftext|>"},       {"eos_token", "<|endoftext|>"},
                       {"unk_token", "<|endoftext|>"},       {"add_prefix_space", false}};
      write(od, "tokenizer_config.json", json::dump(tok, 2) + "\n");
      break;
    }
    case config::Tokenizer::byte:  // the byte and mqar tokenizers need no files: an id is a byte, a number
    case config::Tokenizer::mqar: break;
  }
  ckpt::fsync_dir(od.string());
  const char* names = paper ? "the paper's" : gpt2 ? "Hugging Face GPT2LMHeadModel" : "kvmtrain";
  std::printf("exported %s (%s, %s names, %zu tensors, %s) to %s\n", dir.c_str(),
              paper ? "kvm-paper" : gpt2 ? "GPT-2" : "backbone", names, out.size(), dtype.c_str(), od.string().c_str());
  return 0;
}
