#include "trainer/train/backend_choice.h"

#include "common/unreachable.h"

namespace {

Backend::Device to_backend(config::Device device) {
  switch (device) {
    case config::Device::cpu: return Backend::Device::cpu;
    case config::Device::cuda: return Backend::Device::cuda;
  }
  unreachable();
}

Backend::Attention to_backend(config::AttentionBackend attention) {
  switch (attention) {
    case config::AttentionBackend::native: return Backend::Attention::native;
    case config::AttentionBackend::cudnn: return Backend::Attention::cudnn;
  }
  unreachable();
}

}  // namespace

const Backend& backend_of(config::Device device, config::AttentionBackend attention, int device_index) {
  return backend_for(to_backend(device), device_index, to_backend(attention));
}
