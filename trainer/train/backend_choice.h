#pragma once
// The backend table a config names: train.device and train.attention_backend in the kernels' own
// terms (kernels never see configs). The trainer and the commands that load a model use it.
#include "trainer/config/config.h"
#include "kernels/backend.h"

// device_index: with cuda, the GPU (modulo the visible ones) that becomes current. Throws
// std::runtime_error with one line when cuda is not built in or no GPU is visible.
const Backend& backend_of(config::Device device, config::AttentionBackend attention = config::AttentionBackend::native,
                          int device_index = 0);
