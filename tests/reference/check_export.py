"""Independent check of `kvmtrain export` (GPT-2) with plain json + numpy + the PyTorch reference.

Usage: /usr/bin/python3 check_export.py EXPORT_FP32 EXPORT_BF16 FORWARD.safetensors TOKENS.txt

1. Reads each model.safetensors by the spec (8-byte little-endian header length, JSON header,
   data_offsets covering the data contiguously) and checks every rule.
2. Checks Hugging Face GPT2LMHeadModel's names and (Conv1D: (in, out)) shapes against config.json.
3. Loads the fp32 export into tests/reference/gpt2_ref.py's GPT (HF names mapped back, Conv1D
   weights transposed) and compares its logits and loss with `kvmtrain forward`'s (1e-4).
4. Checks that the bf16 export is the fp32 one rounded to nearest even.
Prints "ok" and exits 0, or raises.
"""
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_ref import GPT  # noqa: E402

DTYPES = {"F32": (np.float32, 4), "BF16": (np.uint16, 2), "F16": (np.float16, 2), "I64": (np.int64, 8)}


def read_safetensors(path):
    """name -> (dtype, shape, raw numpy array); validates the file against the spec."""
    raw = open(path, "rb").read()
    assert len(raw) >= 8, f"{path}: shorter than the header length"
    (n,) = struct.unpack("<Q", raw[:8])
    assert 8 + n <= len(raw), f"{path}: header length {n} exceeds the file"
    text = raw[8:8 + n].decode("utf-8")
    assert text.startswith("{"), f"{path}: header does not start with '{{'"
    assert (8 + n) % 8 == 0, f"{path}: data not 8-byte aligned"
    header = json.loads(text)
    data = raw[8 + n:]
    out, spans = {}, []
    for name, e in header.items():
        if name == "__metadata__":
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in e.items()), "__metadata__ must map str to str"
            continue
        assert set(e) == {"dtype", "shape", "data_offsets"}, f"{name}: keys {sorted(e)}"
        dt, size = DTYPES[e["dtype"]]
        shape = e["shape"]
        assert all(isinstance(d, int) and d >= 0 for d in shape), f"{name}: shape {shape}"
        b, end = e["data_offsets"]
        assert end - b == int(np.prod(shape)) * size, f"{name}: offsets {b},{end} do not hold {shape} {e['dtype']}"
        out[name] = (e["dtype"], shape, np.frombuffer(data[b:end], dtype=dt).reshape(shape))
        spans.append((b, end))
    spans.sort()
    at = 0
    for b, end in spans:
        assert b == at, f"{path}: hole or overlap at byte {at}"
        at = end
    assert at == len(data), f"{path}: {len(data) - at} bytes after the last tensor"
    return out


def expected_shapes(cfg):
    C, V, L, P = cfg["n_embd"], cfg["vocab_size"], cfg["n_layer"], cfg["n_positions"]
    s = {"transformer.wte.weight": [V, C], "transformer.wpe.weight": [P, C],
         "transformer.ln_f.weight": [C], "transformer.ln_f.bias": [C]}
    for l in range(L):
        p = f"transformer.h.{l}."
        s.update({p + "ln_1.weight": [C], p + "ln_1.bias": [C], p + "ln_2.weight": [C], p + "ln_2.bias": [C],
                  p + "attn.c_attn.weight": [C, 3 * C], p + "attn.c_attn.bias": [3 * C],
                  p + "attn.c_proj.weight": [C, C], p + "attn.c_proj.bias": [C],
                  p + "mlp.c_fc.weight": [C, 4 * C], p + "mlp.c_fc.bias": [4 * C],
                  p + "mlp.c_proj.weight": [4 * C, C], p + "mlp.c_proj.bias": [C]})
    if not cfg.get("tie_word_embeddings", True):
        s["lm_head.weight"] = [V, C]
    return s


def main(fp32_dir, bf16_dir, forward_path, tokens_path):
    cfg = json.load(open(os.path.join(fp32_dir, "config.json")))
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert cfg["activation_function"] == "gelu_new" and cfg["layer_norm_epsilon"] == 1e-5
    t32 = read_safetensors(os.path.join(fp32_dir, "model.safetensors"))
    want = expected_shapes(cfg)
    assert set(t32) == set(want), f"names differ: {sorted(set(t32) ^ set(want))}"
    for name, shape in want.items():
        assert t32[name][0] == "F32" and t32[name][1] == shape, f"{name}: {t32[name][:2]}, want F32 {shape}"

    # bf16 = fp32 rounded to nearest even (no NaNs in weights)
    t16 = read_safetensors(os.path.join(bf16_dir, "model.safetensors"))
    assert set(t16) == set(t32)
    for name, (dt, shape, a) in t16.items():
        assert dt == "BF16", name
        u = t32[name][2].view(np.uint32).astype(np.uint64)
        rne = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        assert np.array_equal(a, rne), f"{name}: bf16 is not fp32 rounded to nearest even"

    # the PyTorch reference with the exported weights
    C, V = cfg["n_embd"], cfg["vocab_size"]
    model = GPT({"d_model": C, "vocab_size": V, "padded_vocab_size": V, "max_seq_len": cfg["n_positions"],
                 "n_head": cfg["n_head"], "n_layer": cfg["n_layer"],
                 "tie_embeddings": cfg.get("tie_word_embeddings", True)})
    named = model.named_for_kvmtrain()
    hf_to_ours = {"transformer.wte.weight": ("wte", False), "transformer.wpe.weight": ("wpe", False),
                  "transformer.ln_f.weight": ("ln_f.weight", False), "transformer.ln_f.bias": ("ln_f.bias", False),
                  "lm_head.weight": ("lm_head.weight", False)}
    for l in range(cfg["n_layer"]):
        for hf, ours, tr in [("ln_1.weight", "ln_1.weight", False), ("ln_1.bias", "ln_1.bias", False),
                             ("attn.c_attn.weight", "attn.qkv.weight", True), ("attn.c_attn.bias", "attn.qkv.bias", False),
                             ("attn.c_proj.weight", "attn.proj.weight", True), ("attn.c_proj.bias", "attn.proj.bias", False),
                             ("ln_2.weight", "ln_2.weight", False), ("ln_2.bias", "ln_2.bias", False),
                             ("mlp.c_fc.weight", "mlp.fc.weight", True), ("mlp.c_fc.bias", "mlp.fc.bias", False),
                             ("mlp.c_proj.weight", "mlp.proj.weight", True), ("mlp.c_proj.bias", "mlp.proj.bias", False)]:
            hf_to_ours[f"transformer.h.{l}.{hf}"] = (f"h.{l}.{ours}", tr)
    with torch.no_grad():
        for name, (_, _, a) in t32.items():
            ours, tr = hf_to_ours[name]
            w = torch.from_numpy(a.copy())
            named[ours].copy_(w.t() if tr else w)

    tokens = torch.tensor([[int(x) for x in line.split()] for line in open(tokens_path) if line.strip()])
    with torch.no_grad():
        logits = model(tokens)[..., :V]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1)).item()
    fw = read_safetensors(forward_path)
    got = fw["logits"][2]
    assert list(got.shape) == [tokens.shape[0], tokens.shape[1], V], got.shape
    diff = np.abs(got - logits.numpy()).max()
    assert diff <= 1e-4, f"logits differ from the PyTorch reference by {diff}"
    got_loss = float(fw["loss"][2].reshape(-1)[0])
    assert abs(got_loss - loss) <= 1e-5 * (1 + abs(loss)), f"loss {got_loss} vs reference {loss}"
    print(f"ok: {len(t32)} tensors, logits max diff {diff:.2e}, loss {got_loss:.6f} vs {loss:.6f}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
