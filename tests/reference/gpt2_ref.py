"""PyTorch reference for kvmtrain's GPT-2: an independent model written the plain way.

Usage: /usr/bin/python3 gpt2_ref.py DIR
DIR holds what the C++ test wrote: config.json (shapes and optimizer settings), layout.json
(name, shape, offset of every parameter in params.bin), params.bin (float32), tokens.bin
(int32, (B, T+1)) and optionally mask.bin (the loss mask, parity_io.py). Writes to DIR: logits.bin (B, T, Vp), grads.bin (the parameters' layout)
and result.json ({"loss": first loss, "losses": the losses of `steps` AdamW steps}).
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_io import adamw_losses, load_inputs, load_params, write_grads  # noqa: E402


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.ln_1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def attention(self, x):
        B, T, C = x.shape
        hs = C // self.NH
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.NH, hs).transpose(1, 2)
        k = k.view(B, T, self.NH, hs).transpose(1, 2)
        v = v.view(B, T, self.NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["d_model"]
        self.V = cfg["vocab_size"]
        self.wte = nn.Parameter(torch.zeros(cfg["padded_vocab_size"], C))
        self.wpe = nn.Parameter(torch.zeros(cfg["max_seq_len"], C))
        self.h = nn.ModuleList(Block(C, cfg["n_head"]) for _ in range(cfg["n_layer"]))
        self.ln_f = nn.LayerNorm(C)
        self.tied = cfg["tie_embeddings"]
        if not self.tied:
            self.lm_head = nn.Parameter(torch.zeros(cfg["padded_vocab_size"], C))

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte[idx] + self.wpe[:T]
        for block in self.h:
            x = block(x)
        head = self.wte if self.tied else self.lm_head
        return self.ln_f(x) @ head.t()

    def loss(self, logits, targets):
        # the padded vocabulary rows take no part in the softmax; target -1: not scored (the mean is
        # over the scored ones)
        return F.cross_entropy(logits[..., : self.V].reshape(-1, self.V), targets.reshape(-1), ignore_index=-1)

    def named_for_kvmtrain(self):
        """kvmtrain's parameter names -> this model's tensors."""
        out = {"wte": self.wte, "wpe": self.wpe, "ln_f.weight": self.ln_f.weight, "ln_f.bias": self.ln_f.bias}
        if not self.tied:
            out["lm_head.weight"] = self.lm_head
        for l, b in enumerate(self.h):
            p = f"h.{l}."
            out.update({
                p + "ln_1.weight": b.ln_1.weight, p + "ln_1.bias": b.ln_1.bias,
                p + "attn.qkv.weight": b.qkv.weight, p + "attn.qkv.bias": b.qkv.bias,
                p + "attn.proj.weight": b.proj.weight, p + "attn.proj.bias": b.proj.bias,
                p + "ln_2.weight": b.ln_2.weight, p + "ln_2.bias": b.ln_2.bias,
                p + "mlp.fc.weight": b.fc.weight, p + "mlp.fc.bias": b.fc.bias,
                p + "mlp.proj.weight": b.mlp_proj.weight, p + "mlp.proj.bias": b.mlp_proj.bias,
            })
        return out


def main(d):
    torch.manual_seed(0)
    cfg, layout, flat, x, y = load_inputs(d)
    model = GPT(cfg)
    named = model.named_for_kvmtrain()
    load_params(named, layout, flat)

    logits = model(x)
    loss = model.loss(logits, y)
    loss.backward()
    logits.detach().numpy().astype(np.float32).tofile(os.path.join(d, "logits.bin"))
    write_grads(d, named, layout, flat)
    json.dump({"losses": adamw_losses(model, named, layout, cfg, x, y)}, open(os.path.join(d, "result.json"), "w"))


if __name__ == "__main__":
    main(sys.argv[1])
