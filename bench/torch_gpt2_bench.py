"""The PyTorch peer of bench/train_bench: the same GPT-2 (tests/reference/gpt2_ref.py) on CPU,
fp32 or bf16 autocast (fp32 weights, bf16 matmuls), whole optimizer steps (forward, backward,
clip, AdamW) on random tokens.
usage: /usr/bin/python3 torch_gpt2_bench.py --B 4 --T 64 --steps 4 [--precision bf16] --out FILE
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
from gpt2_ref import GPT  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--B", type=int, default=4)
ap.add_argument("--T", type=int, default=64)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--out", default="torch_bench.json")
ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
a = ap.parse_args()

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
cfg = dict(vocab_size=50257, padded_vocab_size=50304, n_layer=12, n_head=12, d_model=768, max_seq_len=1024,
           tie_embeddings=True)
torch.manual_seed(0)
model = GPT(cfg)
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.02)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
x = torch.randint(0, 50257, (a.B, a.T))
y = torch.randint(0, 50257, (a.B, a.T))
times = []
for s in range(a.steps + 1):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
        loss = model.loss(model(x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if s > 0:
        times.append(time.perf_counter() - t0)
mean = sum(times) / len(times)
row = {"impl": "pytorch", "torch": torch.__version__, "precision": a.precision, "B": a.B, "T": a.T, "threads": torch.get_num_threads(),
       "step_s_mean": mean, "step_s_best": min(times), "tokens_per_s": a.B * a.T / mean,
       "ld_preload": os.environ.get("LD_PRELOAD", "")}
json.dump(row, open(a.out, "w"), indent=2)
print(f"pytorch {a.precision} B={a.B} T={a.T:<4} threads={row['threads']}  {row['tokens_per_s']:8.1f} tok/s  step {mean:.3f}s")
