"""PyTorch reference for kvmtrain's backbone (docs/kvm.md section 12), written the plain way and
independently of the C++ code: attn and swa mixers, learned positions or partial RoPE on
interleaved pairs, qk-LayerNorm, GELU or ReLU^2 MLP, LayerNorm after the embedding, RWKV-style
token shift, value residual, residual scale, with or without biases, tied or untied head, and
kvm mixers through kvm_ref.py (an independent PyTorch KVM layer, itself checked against the paper's
fixtures by test_kvm_ref_fixture.py): q, k, v after the value residual, qk-LayerNorm and partial
RoPE on [0,R) (R = rope_dims or hs/2; 0 with learned positions), merge gate g = 1 + elu(W_g x) with x
the block's ln_1 output before the token shift.

Usage: /usr/bin/python3 backbone_ref.py DIR
DIR holds config.json (the model keys, B, T and the optimizer settings), layout.json (name, shape,
offset of every parameter in params.bin), params.bin (float32) and tokens.bin (int32, (B, T+1)).
Writes logits.bin (B, T, Vp), grads.bin (the parameters' layout) and result.json
({"losses": the losses of `steps` AdamW steps on the batch; losses[0] is the first forward's,
"min_merge_margin"/"min_novelty_gap": the smallest routing margins over every KVM layer, head and
update of every forward, "kvm_layers": the KVM layers}). For each KVM layer l, the first forward's
core inputs and results: kvm{l}_q.bin, kvm{l}_k.bin, kvm{l}_v.bin, kvm{l}_out.bin (B,H,T,D) and
kvm{l}_g.bin (B,H,T) float32, kvm{l}_kind.bin, kvm{l}_slot.bin (B,H,T) int32 (routing as the
fixtures' routing/kind and routing/slot), kvm{l}_margin.bin (B,H,T) float32 (merge margins, NaN
where not merged).
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
from parity_io import adamw_losses, load_inputs, load_params, write_grads, write_kvm_records, write_result  # noqa: E402


def rope(x, R, base):
    """x (B, H, T, D): rotate pairs (2i, 2i+1), i < R/2, by t * base^(-2i/R)."""
    if R == 0:
        return x
    T = x.shape[2]
    i = torch.arange(R // 2, dtype=torch.float64)
    freq = base ** (-2.0 * i / R)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freq[None, :]
    cos, sin = ang.cos().float(), ang.sin().float()
    x0, x1 = x[..., 0:R:2], x[..., 1:R:2]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    rot = torch.stack([r0, r1], dim=-1).flatten(-2)
    return torch.cat([rot, x[..., R:]], dim=-1)


def shift(x, mix):
    """mix * x_t + (1 - mix) * x_{t-1}, x_{-1} = 0."""
    prev = F.pad(x, (0, 0, 1, 0))[:, :-1]
    return mix * x + (1 - mix) * prev


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        C, NH = cfg["d_model"], cfg["n_head"]
        hs = C // NH
        self.cfg, self.layer, self.NH = cfg, layer, NH
        bias = cfg["bias"]
        mixer = cfg["mixers"][layer % len(cfg["mixers"])]
        assert mixer in ("attn", "swa", "kvm"), mixer
        self.kvm = mixer == "kvm"
        self.window = cfg["swa_window"] if mixer == "swa" else 0
        R = cfg["rope_dims"] or hs // 2
        if mixer == "swa" and cfg["swa_rope_dims"]:
            R = cfg["swa_rope_dims"]
        self.R = R if cfg["pos"] == "rope" else 0
        self.ln_1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C, bias=bias)
        self.proj = nn.Linear(C, C, bias=bias)
        self.ln_2 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, 4 * C, bias=bias)
        self.mlp_proj = nn.Linear(4 * C, C, bias=bias)
        if cfg["qk_norm"]:
            self.ln_q, self.ln_k = nn.LayerNorm(hs), nn.LayerNorm(hs)
        if cfg["token_shift"]:
            self.shift_att = nn.Parameter(torch.zeros(C))
            self.shift_mlp = nn.Parameter(torch.zeros(C))
        if self.kvm:
            self.ln_s = nn.LayerNorm(hs)
            self.gate = nn.Linear(C, NH, bias=False)
            self.tau_front = nn.Parameter(torch.ones(NH))
            self.tau_state = nn.Parameter(torch.ones(NH))
            kc = cfg["kvm"]
            self.kvm_cfg = dict(C=kc["chunk"], W=kc["window_chunks"], S=kc["sink"], R=self.R, budget=kc["budget"],
                                min_len=kc["min_len"], power_f=kc["power_f"], power_e=kc["power_e"],
                                sat_n=kc["sat_n"], max_slots=kc["max_slots"], vlens=kc["vlens"],
                                head_temps=kc["head_temps"], merge_gate_keys=kc["merge_gate_keys"],
                                merge_gate_values=kc["merge_gate_values"], gate_appends=kc["gate_appends"],
                                gate_initial_state=kc["gate_initial_state"], ln_eps=1e-5)
            self.kvm_record = None  # set to a dict to keep the next forward's core inputs/results
            self.margins = []       # (min merge margin, min novelty gap) of every forward

    def attention(self, x, v0):
        B, T, C = x.shape
        hs = C // self.NH
        xa = shift(x, self.shift_att) if self.cfg["token_shift"] else x
        q, k, v = self.qkv(xa).split(C, dim=2)
        v_raw = v
        if self.cfg["value_residual"] and self.layer > 0:
            v = 0.5 * (v + v0)
        q = q.view(B, T, self.NH, hs).transpose(1, 2)
        k = k.view(B, T, self.NH, hs).transpose(1, 2)
        v = v.view(B, T, self.NH, hs).transpose(1, 2)
        if self.cfg["qk_norm"]:
            q, k = self.ln_q(q), self.ln_k(k)
        base = self.cfg["rope_base"]
        q, k = rope(q, self.R, base), rope(k, self.R, base)
        if self.kvm:
            g = (1 + F.elu(self.gate(x))).transpose(1, 2)  # (B, NH, T), from ln_1's output before the shift
            rec_on = self.kvm_record is not None
            y, rec = kvm_attention(q, k, v, g, self.ln_s.weight, self.ln_s.bias, self.tau_front, self.tau_state,
                                   self.kvm_cfg, record=rec_on)
            self.margins.append((rec["min_merge_margin"], rec["min_novelty_gap"]))
            if rec_on:
                self.kvm_record.update(q=q, k=k, v=v, g=g, out=y, kind=rec["kind"], slot=rec["slot"],
                                       margin=rec["merge_margin"])
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            return self.proj(y), v_raw
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        t = torch.arange(T)
        mask = t[None, :] <= t[:, None]
        if self.window:
            mask &= t[None, :] > t[:, None] - self.window
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y), v_raw

    def forward(self, x, v0):
        s = self.cfg["residual_scale"]
        a, v_raw = self.attention(self.ln_1(x), v0)
        x = x + s * a
        h = self.ln_2(x)
        if self.cfg["token_shift"]:
            h = shift(h, self.shift_mlp)
        h = self.fc(h)
        h = F.relu(h).square() if self.cfg["mlp"] == "relu2" else F.gelu(h, approximate="tanh")
        return x + s * self.mlp_proj(h), v_raw


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["d_model"]
        self.cfg = cfg
        self.V = cfg["vocab_size"]
        self.wte = nn.Parameter(torch.zeros(cfg["padded_vocab_size"], C))
        if cfg["pos"] == "learned":
            self.wpe = nn.Parameter(torch.zeros(cfg["max_seq_len"], C))
        if cfg["emb_norm"]:
            self.ln_e = nn.LayerNorm(C)
        self.h = nn.ModuleList(Block(cfg, l) for l in range(cfg["n_layer"]))
        self.ln_f = nn.LayerNorm(C)
        if not cfg["tie_embeddings"]:
            self.lm_head = nn.Parameter(torch.zeros(cfg["padded_vocab_size"], C))

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte[idx]
        if self.cfg["pos"] == "learned":
            x = x + self.wpe[:T]
        if self.cfg["emb_norm"]:
            x = self.ln_e(x)
        v0 = None
        for l, block in enumerate(self.h):
            x, v_raw = block(x, v0)
            if l == 0:
                v0 = v_raw
        head = self.wte if self.cfg["tie_embeddings"] else self.lm_head
        return self.ln_f(x) @ head.t()

    def loss(self, logits, targets):
        return F.cross_entropy(logits[..., : self.V].reshape(-1, self.V), targets.reshape(-1))

    def named_for_kvmtrain(self):
        """kvmtrain's parameter names (docs/checkpoint-format.md) -> this model's tensors."""
        out = {"wte": self.wte, "ln_f.weight": self.ln_f.weight, "ln_f.bias": self.ln_f.bias}
        if self.cfg["pos"] == "learned":
            out["wpe"] = self.wpe
        if self.cfg["emb_norm"]:
            out.update({"ln_e.weight": self.ln_e.weight, "ln_e.bias": self.ln_e.bias})
        if not self.cfg["tie_embeddings"]:
            out["lm_head.weight"] = self.lm_head
        for l, b in enumerate(self.h):
            p = f"h.{l}."
            mods = {"ln_1": b.ln_1, "attn.qkv": b.qkv, "attn.proj": b.proj, "ln_2": b.ln_2, "mlp.fc": b.fc,
                    "mlp.proj": b.mlp_proj}
            if self.cfg["qk_norm"]:
                mods.update({"attn.ln_q": b.ln_q, "attn.ln_k": b.ln_k})
            for name, m in mods.items():
                out[p + name + ".weight"] = m.weight
                if m.bias is not None:
                    out[p + name + ".bias"] = m.bias
            if self.cfg["token_shift"]:
                out[p + "attn.shift"] = b.shift_att
                out[p + "mlp.shift"] = b.shift_mlp
            if b.kvm:
                out.update({p + "kvm.ln_s.weight": b.ln_s.weight, p + "kvm.ln_s.bias": b.ln_s.bias,
                            p + "kvm.gate.weight": b.gate.weight, p + "kvm.tau_front": b.tau_front,
                            p + "kvm.tau_state": b.tau_state})
        return out


def main(d):
    torch.manual_seed(0)
    cfg, layout, flat, x, y = load_inputs(d)
    model = Backbone(cfg)
    named = model.named_for_kvmtrain()
    load_params(named, layout, flat)

    kvm_blocks = [(l, b) for l, b in enumerate(model.h) if b.kvm]
    records = {}
    for l, b in kvm_blocks:
        b.kvm_record = records.setdefault(l, {})
    logits = model(x)
    for _, b in kvm_blocks:
        b.kvm_record = None
    write_kvm_records(d, records)
    loss = model.loss(logits, y)
    loss.backward()
    logits.detach().numpy().astype(np.float32).tofile(os.path.join(d, "logits.bin"))
    write_grads(d, named, layout, flat)  # unused parameters (kvm tau_* with head_temps off) get 0
    losses = adamw_losses(model, named, layout, cfg, x, y)
    write_result(d, losses, [l for l, _ in kvm_blocks], [m for _, b in kvm_blocks for m in b.margins])


if __name__ == "__main__":
    main(sys.argv[1])
