"""PyTorch reference for the paper's backbone (docs/paper-mapping.md), written from kvmtrain's docs
and the paper's description, independently of kvmtrain's C++ and of the paper's own code. It is
organised as the paper's model is: separate q, k, v projections, per-channel token shifts of q, k
and v after them (the step before t = 0 being t = 0 itself), a value residual against v_first
(the first layer of each mixer kind's plain value projection of its own ln_attn of the embedding
output) with a linear or a learned LoRA gate, qk-LayerNorm, the paper's RoPE (pair i turns by
-t * theta^(-i/(R/2-1))), full, sliding-window, block-sliding-window or KVM attention (kvm_ref.py),
grouped-query attention (each key/value head, and in KVM layers its state, read by n_head/n_kv_head
query heads, as the later paper code does), a ReLU^2 MLP with its own token shift (zero before t = 0), LayerNorms after the embedding and
before the untied head, a softmax over the whole padded vocabulary when asked. The optimizer is the
paper's recipe: AdamW with the paper's parameter groups (embedding; matrices and head with muP:
lr / (d/base), weight decay * (d/base); the value gate's up-projection by its rank's ratio;
scalars without weight decay), weight decay scheduled with the lr, linear warm-up then linear
decay, no clipping.

Usage: /usr/bin/python3 paper_ref.py DIR   (DIR as parity_io.py reads it; config.json carries the
model keys). Writes logits.bin, grads.bin and result.json ({"losses": ..., plus the KVM routing
margins and per-KVM-layer records of backbone_ref.py}).
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvm_ref import kvm_attention  # noqa: E402
from parity_io import load_inputs, load_params, write_grads, write_kvm_records, write_result  # noqa: E402


def rope(x, R, base, variant):
    """x (B, H, T, D), dims [0, R) in interleaved pairs. kvmtrain: pair i turns by t*base^(-2i/R);
    paper: by -t*base^(-i/(R/2-1))."""
    if R == 0:
        return x
    T, P = x.shape[2], R // 2
    i = torch.arange(P, dtype=torch.float64)
    if variant == "paper":
        freq = base ** (-i / (P - 1)) if P > 1 else torch.ones(1, dtype=torch.float64)
        sign = -1.0
    else:
        freq, sign = base ** (-2.0 * i / R), 1.0
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freq[None, :]
    cos, sin = ang.cos().float(), (sign * ang.sin()).float()
    x0, x1 = x[..., 0:R:2], x[..., 1:R:2]
    rot = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)
    return torch.cat([rot, x[..., R:]], dim=-1)


def shifted(x, w, first):
    """x_t + w * (x_{t-1} - x_t); before t = 0 comes x_0 itself (first) or zero."""
    prev = x[:, :1] if first else torch.zeros_like(x[:, :1])
    return x + w * (torch.cat([prev, x[:, :-1]], dim=1) - x)


def gate_rank(d):
    return max(32, int(round(1.3 * math.sqrt(d) / 32)) * 32)


class Mixer(nn.Module):
    def __init__(self, cfg, layer, kind):
        super().__init__()
        C, H = cfg["d_model"], cfg["n_head"]
        hs = C // H
        self.Hkv = cfg["n_kv_head"] or H
        Ckv = self.Hkv * hs
        self.cfg, self.layer, self.kind, self.H = cfg, layer, kind, H
        self.c_q = nn.Linear(C, C, bias=False)
        self.c_k = nn.Linear(C, Ckv, bias=False)
        self.c_v = nn.Linear(C, Ckv, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.ln_q, self.ln_k = nn.LayerNorm(hs), nn.LayerNorm(hs)
        if cfg["qkv_shift"]:
            self.x_q, self.x_k, self.x_v = (nn.Parameter(torch.zeros(n)) for n in (C, Ckv, Ckv))
        self.vres = cfg["value_residual_mode"] if cfg["value_residual"] else "none"
        if self.vres == "linear":
            self.lamb = nn.Parameter(torch.tensor(0.5))
        elif self.vres == "rwkv":
            r = gate_rank(C)
            self.v_gate0 = nn.Parameter(torch.zeros(Ckv))
            self.v_gate1 = nn.Linear(C, r, bias=False)
            self.v_gate2 = nn.Linear(r, Ckv, bias=False)
        # positions: swa layers take the alternative R and theta
        swa = kind == "swa"
        R = cfg["swa_rope_dims"] if swa and cfg["swa_rope_dims"] else (cfg["rope_dims"] or hs // 2)
        if cfg["pos"] == "none" and not (swa and cfg["swa_rope_dims"]):
            R = 0
        self.R = R
        self.base = cfg["swa_rope_base"] if swa and cfg["swa_rope_base"] else cfg["rope_base"]
        kc = cfg["kvm"]
        if kind == "kvm":
            self.ln_s_k = nn.LayerNorm(hs)
            self.key_weighting = nn.Linear(C, self.Hkv, bias=False)
            self.front_head_temp = nn.Parameter(torch.ones(H))
            self.state_head_temp = nn.Parameter(torch.ones(H))
            self.kvm_cfg = dict(C=kc["chunk"], W=kc["window_chunks"], S=kc["sink"], R=self.R, budget=kc["budget"],
                                min_len=kc["min_len"], power_f=kc["power_f"], power_e=kc["power_e"],
                                sat_n=kc["sat_n"], max_slots=kc["max_slots"], vlens=kc["vlens"],
                                head_temps=kc["head_temps"], merge_gate_keys=kc["merge_gate_keys"],
                                merge_gate_values=kc["merge_gate_values"], gate_appends=kc["gate_appends"],
                                gate_initial_state=kc["gate_initial_state"], ln_eps=1e-5)
            self.record = None
            self.margins = []
        self.chunk, self.n_chunks = kc["chunk"], kc["window_chunks"]

    def forward(self, x, v_first):
        B, T, C = x.shape
        hs = C // self.H
        q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        if self.vres == "linear":
            v = (1 - self.lamb) * v + self.lamb * v_first
        elif self.vres == "rwkv":
            gate = torch.sigmoid(self.v_gate0 + self.v_gate2(self.v_gate1(x)))
            v = v + (v_first - v) * gate
        if self.cfg["qkv_shift"]:
            q, k, v = shifted(q, self.x_q, True), shifted(k, self.x_k, True), shifted(v, self.x_v, True)
        q = self.ln_q(q.view(B, T, self.H, hs)).transpose(1, 2)
        k = self.ln_k(k.view(B, T, self.Hkv, hs)).transpose(1, 2)
        v = v.view(B, T, self.Hkv, hs).transpose(1, 2)
        variant = self.cfg["rope_variant"]
        q, k = rope(q, self.R, self.base, variant), rope(k, self.R, self.base, variant)
        # each key/value head serves the G query heads after it; a KVM state depends on its head's
        # keys, values and gate only (not on the query heads' temperatures), so G copies of it are it
        G = self.H // self.Hkv
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
        if self.kind == "kvm":
            g = (1 + F.elu(self.key_weighting(x))).transpose(1, 2).repeat_interleave(G, dim=1)
            y, rec = kvm_attention(q, k, v, g, self.ln_s_k.weight, self.ln_s_k.bias, self.front_head_temp,
                                   self.state_head_temp, self.kvm_cfg, record=self.record is not None)
            self.margins.append((rec["min_merge_margin"], rec["min_novelty_gap"]))
            if self.record is not None:
                self.record.update(q=q, k=k, v=v, g=g, out=y, kind=rec["kind"], slot=rec["slot"],
                                   margin=rec["merge_margin"])
        else:
            t = torch.arange(T)
            mask = t[None, :] <= t[:, None]
            if self.kind == "swa":
                mask &= t[None, :] > t[:, None] - self.cfg["swa_window"]
            elif self.kind == "bswa":  # the query's chunk and the n-1 before it
                mask &= (t[None, :] // self.chunk) >= (t[:, None] // self.chunk) - self.n_chunks + 1
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
            y = att.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["d_model"]
        self.c_fc = nn.Linear(C, 4 * C, bias=False)
        self.c_proj = nn.Linear(4 * C, C, bias=False)
        self.shift = cfg["mlp_shift"]
        if self.shift:
            self.x_k = nn.Parameter(torch.zeros(C))

    def forward(self, x):
        if self.shift:
            x = shifted(x, self.x_k, False)
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        C = cfg["d_model"]
        self.kind = cfg["mixers"][layer % len(cfg["mixers"])]
        self.ln_attn, self.ln_mlp = nn.LayerNorm(C), nn.LayerNorm(C)
        self.attn = Mixer(cfg, layer, self.kind)
        self.mlp = MLP(cfg)
        self.s = cfg["residual_scale"]

    def forward(self, x, v_first):
        x = x + self.s * self.attn(self.ln_attn(x), v_first)
        return x + self.s * self.mlp(self.ln_mlp(x))


class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, Vp = cfg["d_model"], cfg["padded_vocab_size"]
        self.cfg = cfg
        self.wte = nn.Parameter(torch.zeros(Vp, C))
        self.ln_emb, self.ln_head = nn.LayerNorm(C), nn.LayerNorm(C)
        self.h = nn.ModuleList(Block(cfg, l) for l in range(cfg["n_layer"]))
        self.lm_head = nn.Parameter(torch.zeros(Vp, C))
        # the layer whose value projection of the embedding output is each layer's v_first
        kinds = [b.kind for b in self.h]
        per_mixer = cfg["value_residual_anchor"] == "per_mixer"
        self.anchor = [kinds.index(kinds[l]) if per_mixer else 0 for l in range(len(kinds))]

    def forward(self, idx):
        x0 = self.ln_emb(self.wte[idx])
        v_first = {}
        if self.cfg["value_residual"]:
            for f in sorted(set(self.anchor)):
                blk = self.h[f]
                v_first[f] = blk.attn.c_v(blk.ln_attn(x0))
        x = x0
        for l, block in enumerate(self.h):
            x = block(x, v_first.get(self.anchor[l]))
        return self.ln_head(x) @ self.lm_head.t()

    def loss(self, logits, targets):
        V = self.cfg["padded_vocab_size"] if self.cfg["softmax_over_padding"] else self.cfg["vocab_size"]
        return F.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1))

    def named_for_kvmtrain(self):
        """kvmtrain's parameter names -> this model's tensors, views for the fused q|k|v rows."""
        return {n: t for n, (t, _) in self.kvmtrain_map().items()}

    def kvmtrain_map(self):
        """kvmtrain name -> (tensor, the paper's group: embed, matrix, head, gate_up, scalar)."""
        out = {"wte": (self.wte, "embed"), "ln_e.weight": (self.ln_emb.weight, "scalar"),
               "ln_e.bias": (self.ln_emb.bias, "scalar"), "ln_f.weight": (self.ln_head.weight, "scalar"),
               "ln_f.bias": (self.ln_head.bias, "scalar"), "lm_head.weight": (self.lm_head, "head")}
        for l, b in enumerate(self.h):
            p, a = f"h.{l}.", b.attn
            out[p + "ln_1.weight"], out[p + "ln_1.bias"] = (b.ln_attn.weight, "scalar"), (b.ln_attn.bias, "scalar")
            out[p + "attn.qkv.weight"] = (Fused([a.c_q.weight, a.c_k.weight, a.c_v.weight]), "matrix")
            if self.cfg["qkv_shift"]:
                out[p + "attn.qkv_shift"] = (Fused([a.x_q, a.x_k, a.x_v]), "scalar")
            if a.vres == "linear":
                out[p + "attn.vres.lambda"] = (Fused([a.lamb.view(1)], base=a.lamb), "scalar")
            elif a.vres == "rwkv":
                out[p + "attn.vres.gate_bias"] = (a.v_gate0, "scalar")
                out[p + "attn.vres.gate_down"] = (a.v_gate1.weight, "matrix")
                out[p + "attn.vres.gate_up"] = (a.v_gate2.weight, "gate_up")
            for n, m in (("attn.ln_q", a.ln_q), ("attn.ln_k", a.ln_k), ("ln_2", b.ln_mlp)):
                out[p + n + ".weight"], out[p + n + ".bias"] = (m.weight, "scalar"), (m.bias, "scalar")
            if b.kind == "kvm":
                out[p + "kvm.ln_s.weight"], out[p + "kvm.ln_s.bias"] = (a.ln_s_k.weight, "scalar"), (a.ln_s_k.bias, "scalar")
                out[p + "kvm.gate.weight"] = (a.key_weighting.weight, "matrix")
                out[p + "kvm.tau_front"], out[p + "kvm.tau_state"] = (a.front_head_temp, "scalar"), (a.state_head_temp, "scalar")
            out[p + "attn.proj.weight"] = (a.c_proj.weight, "matrix")
            if self.cfg["mlp_shift"]:
                out[p + "mlp.shift_delta"] = (b.mlp.x_k, "scalar")
            out[p + "mlp.fc.weight"] = (b.mlp.c_fc.weight, "matrix")
            out[p + "mlp.proj.weight"] = (b.mlp.c_proj.weight, "matrix")
        return out


class Fused:
    """Several of this model's tensors seen as kvmtrain's one (rows concatenated): copy_ splits,
    .grad concatenates."""

    def __init__(self, parts, base=None):
        self.parts, self.base = parts, base

    def copy_(self, src):
        n = 0
        for t in self.parts:
            rows = t.shape[0]
            t.copy_(src[n:n + rows].reshape(t.shape))
            n += rows

    @property
    def grad(self):
        if self.base is not None:
            return None if self.base.grad is None else self.base.grad.view(1)
        gs = [t.grad for t in self.parts]
        return None if any(g is None for g in gs) else torch.cat(gs, dim=0)


def paper_lr_ratio(cfg, step):
    """Linear warm-up to 1, then linear decay to 0 at train.steps."""
    warm, steps = cfg["warmup_steps"], cfg["steps"]
    if step < warm:
        return (step + 1) / warm
    return (steps - step) / (steps - warm)


def paper_adamw_losses(model, cfg, x, y):
    C, base = cfg["d_model"], cfg["mup_base_dim"]
    wide = C / base if base else 1.0
    wide_rank = gate_rank(C) / gate_rank(base) if base else 1.0
    lr, wd = cfg["lr"], cfg["weight_decay"]
    groups = {}
    for name, (t, group) in model.kvmtrain_map().items():
        params = t.parts if isinstance(t, Fused) and t.base is None else [t.base if isinstance(t, Fused) else t]
        ratio = {"embed": 1.0, "matrix": wide, "head": wide, "gate_up": wide_rank, "scalar": 1.0}[group]
        decay = 0.0 if group == "scalar" else wd * ratio
        groups.setdefault((lr / ratio, decay), []).extend(params)
    opt = torch.optim.AdamW([{"params": ps, "lr": glr, "weight_decay": gwd, "peak_lr": glr, "peak_wd": gwd}
                             for (glr, gwd), ps in groups.items()], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    losses = []
    for step in range(cfg["steps"]):
        opt.zero_grad()
        loss = model.loss(model(x), y)
        loss.backward()
        r = paper_lr_ratio(cfg, step)
        for g in opt.param_groups:
            g["lr"] = g["peak_lr"] * r
            g["weight_decay"] = g["peak_wd"] * r  # decay scheduled with the lr
        opt.step()
        losses.append(loss.item())
    return losses


def main(d):
    torch.manual_seed(0)
    cfg, layout, flat, x, y = load_inputs(d)
    model = Model(cfg)
    named = model.named_for_kvmtrain()
    load_params(named, layout, flat)
    kvm = [(l, b.attn) for l, b in enumerate(model.h) if b.kind == "kvm"]
    records = {l: {} for l, _ in kvm}
    for l, a in kvm:
        a.record = records[l]
    logits = model(x)
    for _, a in kvm:
        a.record = None
    write_kvm_records(d, records)
    loss = model.loss(logits, y)
    loss.backward()
    logits.detach().numpy().astype(np.float32).tofile(os.path.join(d, "logits.bin"))
    write_grads(d, named, layout, flat)
    losses = paper_adamw_losses(model, cfg, x, y)
    write_result(d, losses, [l for l, _ in kvm], [m for _, a in kvm for m in a.margins])


if __name__ == "__main__":
    main(sys.argv[1])
