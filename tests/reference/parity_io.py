"""What the PyTorch reference scripts share: reading the inputs a C++ parity test wrote, loading
kvmtrain's flat parameters into a model, writing the gradients back in kvmtrain's layout, and
the 10-step AdamW run with kvmtrain's clipping and schedule.

DIR holds config.json, layout.json (name, shape, offset of every parameter in params.bin),
params.bin (float32), tokens.bin (int32, (B, T+1)) and optionally mask.bin (uint8, (B, T+1): the
loss mask, 1 where a token is a scored target).
"""
import json
import math
import os

import numpy as np
import torch


def load_inputs(d):
    """cfg, layout, the flat float32 parameters, inputs x (B, T) and targets y (B, T): -1 where
    mask.bin (when there is one) says the target is not scored."""
    cfg = json.load(open(os.path.join(d, "config.json")))
    layout = json.load(open(os.path.join(d, "layout.json")))
    flat = np.fromfile(os.path.join(d, "params.bin"), dtype=np.float32)
    tokens = torch.from_numpy(np.fromfile(os.path.join(d, "tokens.bin"), dtype=np.int32).astype(np.int64))
    tokens = tokens.view(cfg["B"], cfg["T"] + 1)
    y = tokens[:, 1:]
    mask_path = os.path.join(d, "mask.bin")
    if os.path.exists(mask_path):
        mask = torch.from_numpy(np.fromfile(mask_path, dtype=np.uint8).astype(np.bool_)).view(cfg["B"], cfg["T"] + 1)
        y = torch.where(mask[:, 1:], y, torch.full_like(y, -1))
    return cfg, layout, flat, tokens[:, :-1], y


def load_params(named, layout, flat):
    """Copies kvmtrain's parameters into the model's tensors (named: kvmtrain name -> tensor)."""
    names = {e["name"] for e in layout}
    assert set(named) == names, "parameter names differ from kvmtrain's: " + str(set(named) ^ names)
    with torch.no_grad():
        for e in layout:
            n = int(np.prod(e["shape"]))
            named[e["name"]].copy_(torch.from_numpy(flat[e["offset"]: e["offset"] + n].reshape(e["shape"])))


def write_grads(d, named, layout, flat):
    """grads.bin in kvmtrain's layout; a parameter without a gradient (unused) is written as 0."""
    grads = np.zeros_like(flat)
    for e in layout:
        n = int(np.prod(e["shape"]))
        g = named[e["name"]].grad
        if g is not None:
            grads[e["offset"]: e["offset"] + n] = g.numpy().reshape(-1)
    grads.tofile(os.path.join(d, "grads.bin"))


def lr_at(cfg, step):
    lr, min_lr, warm, steps = cfg["lr"], cfg["min_lr"], cfg["warmup_steps"], cfg["steps"]
    if step < warm:
        return lr * (step + 1) / warm
    ratio = min(1.0, (step - warm) / (steps - warm))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def adamw_losses(model, named, layout, cfg, x, y):
    """The losses of cfg["steps"] AdamW steps on the same batch: decay on matrices and
    embeddings, none on biases and LayerNorms; gradient-norm clipping; warm-up then cosine."""
    decay = [named[e["name"]] for e in layout if len(e["shape"]) >= 2]
    no_decay = [named[e["name"]] for e in layout if len(e["shape"]) < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    losses = []
    for step in range(cfg["steps"]):
        opt.zero_grad()
        loss = model.loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        opt.step()
        losses.append(loss.item())
    return losses


def write_kvm_records(d, records):
    """Each KVM layer's first-forward core inputs and results (records: layer -> the dict its
    mixer filled): kvm{l}_{q,k,v,g,out,margin}.bin float32, kvm{l}_{kind,slot}.bin int32."""
    for l, r in records.items():
        for n in ("q", "k", "v", "g", "out", "margin"):
            r[n].detach().numpy().astype(np.float32).tofile(os.path.join(d, f"kvm{l}_{n}.bin"))
        for n in ("kind", "slot"):
            r[n].numpy().astype(np.int32).tofile(os.path.join(d, f"kvm{l}_{n}.bin"))


def write_result(d, losses, kvm_layers, margins):
    """result.json: the optimizer steps' losses, the KVM layers, and the smallest merge margin and
    novelty gap over every (merge margin, novelty gap) of `margins` (1e30 for none: JSON has no inf)."""
    big = lambda v: v if math.isfinite(v) else 1e30  # noqa: E731
    json.dump({"losses": losses, "kvm_layers": kvm_layers,
               "min_merge_margin": big(min([m[0] for m in margins], default=math.inf)),
               "min_novelty_gap": big(min([m[1] for m in margins], default=math.inf))},
              open(os.path.join(d, "result.json"), "w"))
