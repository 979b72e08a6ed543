#pragma once
// The trainer's side of checkpoints: what a checkpoint of a run holds (docs/checkpoint-format.md)
// and how a model, its optimizer and the loop's state go into and come out of one. The format of
// the directory itself (temporary name, fsync, manifest) is checkpoints/checkpoint.h's job.
//
//   model.safetensors      fp32 master weights, the model's table names and shapes (padded vocab)
//   optimizer.safetensors  AdamW moments "m.NAME", "v.NAME", fp32, the same shapes
// Always unsharded, whatever the run's layout: tensor-parallel shards are gathered into full
// tensors (tp::gather) and ZeRO-1 ranges of the moments into whole moments
// (DataParallel::gather_moments), so that a run can resume on any data x tensor layout.
//   state.json             step, optimizer t, tokens seen, loader position, RNG states, world
//                          size and layout, the skipped-step streak, elapsed time, val_loss
//   config.yaml            the resolved config
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.h"
#include "checkpoints/safetensors.h"
#include "trainer/config/config.h"
#include "trainer/parallel/data_parallel.h"
#include "trainer/model/model.h"
#include "trainer/optim/optimizer.h"

// Everything besides the model and optimizer that the training loop needs to continue exactly.
struct LoopState {
  int64_t step = 0;                // optimizer steps done
  uint64_t tokens_seen = 0;        // all ranks
  uint64_t loader_position = 0;    // global training windows consumed
  uint64_t sample_rng = 0;         // the sampling Rng's state
  int bad_in_a_row = 0;            // consecutive non-finite steps
  double time_s = 0;               // training time so far (log.jsonl's time_s)
  std::optional<double> val_loss;  // when validation ran at this step
  json::Array unlogged_rows;       // log.jsonl rows a failed write could not append: a resume appends them
};

// The model's parameters as named full tensors (table names and full shapes, padded vocabulary
// included). Collective over model.tensor_comm() when the model is tensor-parallel: every rank of
// the tensor group calls it and gets the full tensors.
std::vector<ckpt::NamedTensor> model_tensors(Model& model);
// Copies `tensors` (full tensors) into the model, each tensor-parallel rank taking its shard
// (tp::extract): every table entry must be there with its full shape, nothing else; errors name
// `origin` and the tensor. Local, no communication.
void set_model_tensors(Model& model, const std::vector<ckpt::NamedTensor>& tensors, const std::string& origin);

// Saves the checkpoint of `state.step` under <log.dir>/checkpoints and returns its directory.
// Collective: every rank of the run calls it (the parameters gathered over the tensor group, the
// moments over dp's data group and then the tensor group); only the rank with `write` set (world
// rank 0) writes the files. The caller makes the others wait until the save is complete.
std::string save_run_checkpoint(const config::Config& cfg, const std::string& resolved_yaml, Model& model,
                                DataParallel& dp, const LoopState& state, bool write = true);
// Restores model, optimizer and loop state from a verified checkpoint directory, written by any
// layout: every rank reads it, takes its tensor shard of the parameters and moments and dp's
// ZeRO-1 range of the moments. Local, no communication.
LoopState restore_run_checkpoint(const std::string& dir, Model& model, DataParallel& dp);

// The config a checkpoint was trained with; for a directory in the paper's format
// (paper_format.h), the model its config.json maps to, the rest at the defaults.
config::Config checkpoint_config(const std::string& dir);
// The model tensors (layout names, full shapes) of a checkpoint directory, or of a directory in
// the paper's format, renamed, with what the paper lacks from kvmtrain's initialisation.
std::vector<ckpt::NamedTensor> checkpoint_tensors(const std::string& dir, const config::ModelConfig& m);
// Weights only (train.init_from, export, forward, generate): a checkpoint or run directory, a
// kvmtrain export directory, a Hugging Face GPT-2 safetensors directory or a model in the paper's
// format.
void load_weights(const std::string& path, Model& model);

// CKPT_OR_RUN -> a verified checkpoint directory, warnings printed to stderr; a directory in the
// paper's format is taken as it is.
std::string resolve_checkpoint(const std::string& ckpt_or_run, bool best);

// A pure GPT-2 (every backbone switch at GPT-2's default): exported with Hugging Face's names.
bool is_pure_gpt2(const config::ModelConfig& m);
