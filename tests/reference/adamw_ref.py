"""test_adamw_parity's reference: torch.optim.AdamW with one param group per kvmtrain tensor, the
group's lr divided by the tensor's muP ratio and its weight decay (0 where it does not decay)
multiplied by it; under weight_decay_schedule lr the decay follows the schedule, wd * lr_t / lr.

DIR holds config.json (the optimizer settings, per-step grad_scales and the views), params.bin
(float32, kvmtrain's layout) and grads.bin (steps rows of it). Writes after.bin (the parameters
after each step, steps rows) and m.bin, v.bin (the moments after the last), padding left 0.
"""
import json
import os
import sys

import numpy as np
import torch

from parity_io import lr_at

torch.set_num_threads(1)
d = sys.argv[1]
cfg = json.load(open(os.path.join(d, "config.json")))
flat = np.fromfile(os.path.join(d, "params.bin"), dtype=np.float32)
steps, total = cfg["steps"], flat.size
grads = np.fromfile(os.path.join(d, "grads.bin"), dtype=np.float32).reshape(steps, total)
views = cfg["views"]
params = [torch.tensor(flat[v["offset"]: v["offset"] + v["size"]], requires_grad=True) for v in views]
opt = torch.optim.AdamW([{"params": [p]} for p in params], lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                        eps=cfg["eps"], weight_decay=0.0)


def flat_of(tensors):
    out = np.zeros(total, dtype=np.float32)
    for v, t in zip(views, tensors):
        out[v["offset"]: v["offset"] + v["size"]] = t.detach().numpy()
    return out


after = []
for step in range(steps):
    lr = lr_at(cfg, step)
    wd = cfg["weight_decay"] * (lr / cfg["lr"] if cfg["weight_decay_schedule"] == "lr" else 1.0)
    for v, p, g in zip(views, params, opt.param_groups):
        g["lr"] = lr / v["mup_ratio"]
        g["weight_decay"] = wd * v["mup_ratio"] if v["decay"] else 0.0
        p.grad = torch.tensor(grads[step, v["offset"]: v["offset"] + v["size"]]) * cfg["grad_scales"][step]
    opt.step()
    after.append(flat_of(params))
np.stack(after).tofile(os.path.join(d, "after.bin"))
flat_of([opt.state[p]["exp_avg"] for p in params]).tofile(os.path.join(d, "m.bin"))
flat_of([opt.state[p]["exp_avg_sq"] for p in params]).tofile(os.path.join(d, "v.bin"))
