// Loss masks from shard to gradient: a model fed through data::Batch from a masked shard gives
// bit-identical gradients whatever the token at an unscored target is (the window's last token,
// which no input sees), while changing a scored one changes them; and the loss is the mean over
// the scored targets only (against a naive loop over the model's logits).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "data/batch.h"
#include "data/loader.h"
#include "data/shard.h"
#include "tests/trainer/model/small_models.h"

namespace fs = std::filesystem;

namespace {

constexpr int B = 2, T = 12;

struct MaskedDocs {
  std::vector<uint32_t> ids;  // B documents of T+1 tokens
  std::vector<uint8_t> mask;
};

MaskedDocs draw(const config::ModelConfig& m) {
  std::mt19937 rng(9);
  MaskedDocs s;
  s.ids.resize(size_t(B) * (T + 1));
  s.mask.resize(s.ids.size());
  for (size_t i = 0; i < s.ids.size(); i++) s.ids[i] = rng() % uint32_t(m.vocab_size), s.mask[i] = uint8_t(i % 3 != 0);
  return s;
}

// The parameter gradients of one forward/loss/backward over the batch the loader reads from `s`
// (written as a shard in `dir`), the loss, and the batch.
std::vector<float> gradients(const config::ModelConfig& m, const MaskedDocs& s, const fs::path& dir, float* loss,
                             data::Batch* batch) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  data::ShardInfo info{"test", m.vocab_size, 0};
  info.doc_len = T + 1;
  info.loss_mask = true;
  {
    data::ShardWriter w((dir / "shard_00000.h5").string(), info);
    for (int b = 0; b < B; b++) w.add_document(&s.ids[size_t(b) * (T + 1)], T + 1, &s.mask[size_t(b) * (T + 1)]);
    w.finish();
  }
  data::Loader loader({{{dir.string(), 1.0}}, B, T, 1, 0, 1, false, "test", m.vocab_size});
  batch->load(loader);
  Model model(m, B, T);
  test_models::perturb(model, 3);
  model.zero_grad();
  model.forward(batch->inputs.data(), B, T);
  *loss = model.loss(batch->targets.data(), 1.0f / float(batch->scored));
  model.backward();
  return std::vector<float>(model.grads(), model.grads() + model.table().total());
}

}  // namespace

TEST(LossMask, AnUnscoredTargetChangesNoGradient) {
  const config::ModelConfig m = test_models::hybrid();
  const fs::path dir = fs::temp_directory_path() / ("kvm_loss_mask_" + std::to_string(getpid()));
  MaskedDocs s = draw(m);
  const size_t last0 = T, last1 = 2 * T + 1;  // the last token of each window: a target only
  s.mask[last0] = 0, s.mask[last1] = 1;
  float loss = 0;
  data::Batch batch(B, T);
  const std::vector<float> base = gradients(m, s, dir, &loss, &batch);

  // the loss is the mean over the scored targets of the model's own logits (a naive loop)
  Model model(m, B, T);
  test_models::perturb(model, 3);
  model.forward(batch.inputs.data(), B, T);
  std::vector<float> host;
  const float* logits = model.logits_host(0, size_t(B) * T, host);
  double sum = 0;
  int scored = 0;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      if (!s.mask[size_t(b) * (T + 1) + t + 1]) continue;
      const float* row = logits + (size_t(b) * T + t) * model.logits_width();
      double mx = row[0], z = 0;
      for (int v = 1; v < m.vocab_size; v++) mx = std::max(mx, double(row[v]));
      for (int v = 0; v < m.vocab_size; v++) z += std::exp(double(row[v]) - mx);
      sum += mx + std::log(z) - double(row[s.ids[size_t(b) * (T + 1) + t + 1]]);
      scored++;
    }
  EXPECT_EQ(batch.scored, scored);
  EXPECT_NEAR(loss, sum / scored, 1e-5);

  MaskedDocs unscored = s;
  unscored.ids[last0] = (s.ids[last0] + 1) % uint32_t(m.vocab_size);
  float loss2 = 0;
  data::Batch batch2(B, T);
  EXPECT_EQ(gradients(m, unscored, dir, &loss2, &batch2), base) << "the masked target moved a gradient";
  EXPECT_EQ(loss2, loss);

  MaskedDocs scored_changed = s;
  scored_changed.ids[last1] = (s.ids[last1] + 1) % uint32_t(m.vocab_size);
  EXPECT_NE(gradients(m, scored_changed, dir, &loss2, &batch2), base) << "the control: a scored target must count";
  fs::remove_all(dir);
}
