// Token shift, the CUDA twin of kernels/cpu/token_shift.cpp, in the forms of kernels.h: mix_zero
// out[b,t] = w*inp[b,t] + (1-w)*inp[b,t-1], delta_* out[b,t] = inp[b,t] + w*(inp[b,t-1] - inp[b,t]),
// the row before t = 0 being prev[b], zero, or for delta_first inp[b,0]. One element per thread for
// out and dinp; dw is a deterministic column sum over the B*T rows (column_sums in common.cuh).
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

__global__ void token_shift_forward_kernel(float* out, const float* inp, const float* prev, const float* w, int B,
                                           int T, int C, TokenShiftForm form) {
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // (b, t, c)
  if (idx >= (size_t)B * T * C) return;
  int c = (int)(idx % C);
  size_t bt = idx / C;
  int t = (int)(bt % T);
  const float* xp = t > 0                                 ? inp + idx - C
                    : prev                                ? prev + (bt / T) * C + c
                    : form == TokenShiftForm::delta_first ? inp + idx
                                                          : nullptr;
  if (form == TokenShiftForm::mix_zero)
    out[idx] = xp ? w[c] * inp[idx] + (1.0f - w[c]) * *xp : w[c] * inp[idx];
  else
    out[idx] = xp ? inp[idx] + w[c] * (*xp - inp[idx]) : inp[idx] - w[c] * inp[idx];  // x + w*(0 - x)
}

// dinp[b,t] += a*dout[b,t] + b*dout[b,t+1], the two terms added one after the other as on the CPU:
// x_t's weight in out_t and out_{t+1}, (w, 1-w) for mix_zero, (1-w, w) for delta_*, and a = 1 at
// delta_first's t = 0 (out_0 = x_0)
__global__ void token_shift_backward_dinp_kernel(float* dinp, const float* dout, const float* w, int B, int T, int C,
                                                 TokenShiftForm form) {
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // (b, t, c)
  if (idx >= (size_t)B * T * C) return;
  int c = (int)(idx % C);
  int t = (int)((idx / C) % T);
  bool mix = form == TokenShiftForm::mix_zero;
  float di;  // each branch a whole a*dout + dinp, so that it contracts to one FMA as before the forms
  if (mix) di = dinp[idx] + w[c] * dout[idx];
  else if (t == 0 && form == TokenShiftForm::delta_first) di = dinp[idx] + dout[idx];
  else di = dinp[idx] + (1.0f - w[c]) * dout[idx];
  if (t + 1 < T) di += (mix ? 1.0f - w[c] : w[c]) * dout[idx + C];
  dinp[idx] = di;
}

// dw[c] += sum over rows (b,t) of dout * (x_t - x_{t-1}) (mix_zero) or dout * (x_{t-1} - x_t)
// (delta_*), x_{-1} = 0, or x_0 for delta_first (its row t = 0 adds nothing); blockDim (32, 32)
__global__ void token_shift_backward_dw_kernel(float* dw, const float* dout, const float* inp, int B, int T, int C,
                                               TokenShiftForm form) {
  column_sums<1>({dw}, B * T, C, [=](int row, int c, float* acc) {
    size_t i = (size_t)row * C + c;
    if (form == TokenShiftForm::mix_zero)
      acc[0] += dout[i] * (inp[i] - (row % T > 0 ? inp[i - C] : 0.0f));
    else if (row % T > 0 || form == TokenShiftForm::delta_zero)
      acc[0] += dout[i] * ((row % T > 0 ? inp[i - C] : 0.0f) - inp[i]);
  });
}

}  // namespace

void token_shift_forward(float* out, const float* inp, const float* prev, const float* w, int B, int T, int C,
                         TokenShiftForm form) {
  // out, inp: (B,T,C); prev (B,C) or nullptr; w (C); device. out must not alias inp.
  size_t total = (size_t)B * T * C;
  if (total == 0) return;
  launch(token_shift_forward_kernel, blocks_for(total), kThreads, 0, out, inp, prev, w, B, T, C, form);
}

void token_shift_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, int B, int T,
                          int C, TokenShiftForm form) {
  // dinp (B,T,C), dw (C): accumulated; dout, inp (B,T,C); w (C); device
  size_t total = (size_t)B * T * C;
  if (total == 0) return;
  launch(token_shift_backward_dinp_kernel, blocks_for(total), kThreads, 0, dinp, dout, w, B, T, C, form);
  launch(token_shift_backward_dw_kernel, blocks_for(C, 32), dim3(32, 32), 0, dw, dout, inp, B, T, C, form);
}

}  // namespace kernels::cuda
