#pragma once
// What a token-by-token decode keeps between tokens (model_decode.cpp makes it; block.cpp and
// mixer_kvm.cpp read and extend it). Every buffer is in the backend's memory.
#include <vector>

#include "trainer/model/model.h"

struct Model::DecodeCache {
  struct Layer {
    int cap = 0;                      // attention: positions kept (a ring of the window for swa)
    DeviceBuffer k, v;                // attention: (cap, Ca) k (after qk-norm, RoPE) and v (after the value residual)
    DeviceBuffer prev_att, prev_mlp;  // token shift: (C) the previous token's ln_1 / ln_2 rows
    DeviceBuffer prev_qkv;            // model.qkv_shift: (W) the previous token's rows entering the shift
  };
  std::vector<Layer> layers;
  Activations acts;           // one token's
  DeviceBuffer full_logits;   // TP > 1: (Vp) every rank's vocabulary slice, gathered
  std::vector<float> logits;  // (Vp) on the host, what step() returns where the backend is not
};
