// The KVM rules both twins follow (kernels/kvm_rules.h): the budget schedule of doc section 9 and
// the tape's host part with its accessors.
#include "kernels/kvm_rules.h"

#include <cmath>

namespace kernels {

int kvm_budget(const KvmParams& p, int ctx_len, int avail, int M) {
  long long target = p.min_len;
  switch (p.budget) {
    case KvmBudget::fixed: break;
    case KvmBudget::power_law:
      target = std::max((long long)std::floor(p.power_f * std::pow((double)ctx_len, p.power_e)), target);
      break;
    case KvmBudget::saturating:
      target = std::max((long long)p.sat_n * ctx_len / ((long long)p.sat_n + ctx_len), target);  // floor: all >= 0
      break;
  }
  long long capped = std::min({target, (long long)avail, (long long)p.max_slots});
  return (int)std::max(capped, (long long)M);
}

KvmTape::KvmTape() : impl(std::make_unique<Impl>()) {}
KvmTape::~KvmTape() = default;
KvmTape::KvmTape(KvmTape&&) noexcept = default;
KvmTape& KvmTape::operator=(KvmTape&&) noexcept = default;

int KvmTape::final_slots(int b, int h) const { return impl->heads[b * impl->H + h].final_state.M; }
const float* KvmTape::final_s_k(int b, int h) const { return impl->heads[b * impl->H + h].final_k.data(); }
const float* KvmTape::final_s_v(int b, int h) const { return impl->heads[b * impl->H + h].final_v.data(); }
const float* KvmTape::final_s_len(int b, int h) const {
  return impl->heads[b * impl->H + h].final_state.s_len.data();
}
const std::vector<int>& KvmTape::slots_after_update() const { return impl->m_after; }
int KvmTape::routing_kind(int b, int h, int t) const { return impl->heads[b * impl->H + h].kind[t]; }
int KvmTape::routing_slot(int b, int h, int t) const { return impl->heads[b * impl->H + h].slot[t]; }
size_t KvmTape::bytes() const {
  size_t n = impl->m_after.size() * sizeof(int);
  for (const auto& hd : impl->heads) {
    n += hd.final_state.bytes() + (hd.final_k.size() + hd.final_v.size()) * sizeof(float) + hd.kind.size() * sizeof(int8_t) + hd.slot.size() * sizeof(int);
    for (const auto& st : hd.states) n += st.bytes();
  }
  return n;
}

}  // namespace kernels
