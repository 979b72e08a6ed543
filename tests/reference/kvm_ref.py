"""An independent PyTorch implementation of one KVM attention layer (Key-Value Means), written
plainly from docs/kvm.md (sections 4-9 and 11, training/prefill mode), with autograd
for every gradient. It does not port kvmtrain's C++ kernels; it is checked against the paper's
reference fixtures by test_kvm_ref_fixture.py and used by backbone_ref.py for `kvm` layers.

Core boundary (as the fixtures and kernels/kvm.h): q, k, v (B,H,T,D) after the projections,
qk-LayerNorm and partial RoPE on [0,R); g (B,H,T) the merge gate after 1+elu; ln_s weight/bias
(D); tau_front, tau_state (H). Returns the attention output (B,H,T,D) before the output
projection, plus a record of what happened (schedule, routing, states, routing margins).

Interpretation of the flags (the doc leaves their combinations open; the fixtures have them all
on except gate_initial_state):
- merge key  = kp * g if merge_gate_keys else kp;  merge value = v * g if merge_gate_values else v.
- appended slot: the merge key/value when gate_appends, else kp / v; s_len = ||appended value||.
- initial chunk: the merge key/value when gate_initial_state, else kp / v; s_len = ||v|| (never g).
- vlens off: s_len is a per-slot token count (1 per founding token, +1 per merged token), no
  gradient; the read value is s_v / s_len.
- head_temps off: tau_front = tau_state = 1 (the parameters get no gradient).
Routing (the append selection and the argmax merges) is computed without gradient.
"""
import math

import torch
import torch.nn.functional as F

DEFAULTS = dict(C=256, W=2, S=1, R=0, budget="fixed", min_len=256, power_f=16.0, power_e=0.5, sat_n=1024,
                max_slots=0, vlens=True, head_temps=True, merge_gate_keys=True, merge_gate_values=True,
                gate_appends=True, gate_initial_state=False, ln_eps=1e-5)


def budget(cfg, ctx_len, avail, M):
    """Section 9: the state size after an update; never shrinks, capped by avail and Mmax."""
    mode = cfg["budget"]
    if mode == "fixed":
        m = cfg["min_len"]
    elif mode == "power_law":
        m = max(int(math.floor(cfg["power_f"] * float(ctx_len) ** cfg["power_e"])), cfg["min_len"])
    elif mode in ("saturating", "kvm_saturation"):
        n = cfg["sat_n"]
        m = max((n * ctx_len) // (n + ctx_len), cfg["min_len"])
    else:
        raise ValueError("unknown budget " + str(mode))
    cap = cfg["max_slots"] if cfg["max_slots"] > 0 else 1 << 30
    return max(min(m, avail, cap), M)


def bswa_begin(n, C, W):
    return max(0, -(-n // C) * C - W * C)


def _take(x, idx):
    """x (B,H,n,...) rows idx (B,H,m) -> (B,H,m,...)."""
    if x.dim() == 3:
        return torch.gather(x, 2, idx)
    return torch.gather(x, 2, idx[..., None].expand(*idx.shape, x.shape[-1]))


def kvm_attention(q, k, v, g, ln_w, ln_b, tau_front, tau_state, cfg, record=False):
    cfg = {**DEFAULTS, **cfg}
    B, H, T, D = q.shape
    C, W, S, R = cfg["C"], cfg["W"], cfg["S"], cfg["R"]
    eps = cfg["ln_eps"]
    dt = q.dtype
    if not cfg["head_temps"]:
        tau_front = torch.ones(H, dtype=dt)
        tau_state = torch.ones(H, dtype=dt)
    tf = tau_front.view(1, H, 1, 1)
    ts = tau_state.view(1, H, 1, 1)
    scale = 1.0 / math.sqrt(D)

    def ln_s(x):
        return F.layer_norm(x, (D,), ln_w, ln_b, eps)

    # section 4: prepared keys, the RoPE dims zeroed before ln_s
    kp = ln_s(torch.cat([torch.zeros_like(k[..., :R]), k[..., R:]], dim=-1))
    gg = g[..., None]
    km = kp * gg if cfg["merge_gate_keys"] else kp            # merge key
    vm = v * gg if cfg["merge_gate_values"] else v            # merge value
    ka, va = (km, vm) if cfg["gate_appends"] else (kp, v)     # appended slot
    k0, v0 = (km, vm) if cfg["gate_initial_state"] else (kp, v)  # initial chunk

    rec = dict(begin=[], end=[], ctx_len=[], avail=[], m_before=[], m_after=[], n_append=[], trace=[],
               min_merge_margin=math.inf, min_novelty_gap=math.inf)
    if record:
        kind = torch.zeros(B, H, T, dtype=torch.int64)
        slot = torch.full((B, H, T), -1, dtype=torch.int64)
        upd = torch.full((B, H, T), -1, dtype=torch.int64)
        novelty = torch.full((B, H, T), math.nan, dtype=torch.float64)
        margin = torch.full((B, H, T), math.nan, dtype=torch.float64)

    outs = []
    # section 7: queries [0, F) use plain causal attention (keys scaled by tau_front)
    Fq = min(T, W * C)
    att = (q[:, :, :Fq] @ (k[:, :, :Fq] * tf).transpose(-2, -1)) * scale
    causal = torch.ones(Fq, Fq, dtype=torch.bool).tril()
    att = att.masked_fill(~causal, float("-inf")).softmax(-1)
    outs.append(att @ v[:, :, :Fq])

    # initial state: chunk 0
    m0 = min(T, C)
    sk, sv = k0[:, :, :m0], v0[:, :, :m0]
    sl = v[:, :, :m0].norm(dim=-1) if cfg["vlens"] else torch.ones(B, H, m0, dtype=dt)
    if record:
        kind[:, :, :m0] = 1
        slot[:, :, :m0] = torch.arange(m0)

    u = 0
    for qb in range(Fq, T, C):
        qe = min(T, qb + C)
        wb = bswa_begin(qe, C, W)
        # section 6: read-out, one softmax over [state slots; causal window [wb, qe)]
        Ks = ln_s(sk) * ts
        if cfg["vlens"]:
            Vs = sv / sv.norm(dim=-1, keepdim=True) * sl[..., None]
        else:
            Vs = sv / sl[..., None]
        qc = q[:, :, qb:qe]
        a_s = qc @ Ks.transpose(-2, -1)
        a_w = qc @ (k[:, :, wb:qe] * tf).transpose(-2, -1)
        tq = torch.arange(qb, qe)[:, None]
        tk = torch.arange(wb, qe)[None, :]
        a_w = a_w.masked_fill(~(tk <= tq), float("-inf"))
        p = (torch.cat([a_s, a_w], dim=-1) * scale).softmax(-1)
        M = sk.shape[2]
        outs.append(p[..., :M] @ Vs + p[..., M:] @ v[:, :, wb:qe])
        if qe == T:
            break  # training: the last update is never read
        nwb = bswa_begin(min(T, qe + C), C, W)
        if nwb <= wb:
            continue
        # section 8: fold tokens [wb, nwb) into the state
        a, e = wb, nwb
        n = e - a
        n_app = min(max(budget(cfg, qe, nwb, M) - M, 0), n)
        n_mrg = n - n_app
        rec["begin"].append(a), rec["end"].append(e), rec["ctx_len"].append(qe), rec["avail"].append(nwb)
        rec["m_before"].append(M), rec["n_append"].append(n_app)
        with torch.no_grad():
            if n_app == 0:
                is_app = torch.zeros(B, H, n, dtype=torch.bool)
            elif M == 0:
                is_app = torch.zeros(B, H, n, dtype=torch.bool)
                is_app[..., n - n_app:] = True  # empty state: the last n_app tokens
            else:
                nov = (kp[:, :, a:e] @ ln_s(sk).transpose(-2, -1)).amax(-1)  # ungated, pre-append, sinks in
                order = torch.sort(nov, dim=-1, stable=True).indices          # ties: lowest index first
                is_app = torch.zeros(B, H, n, dtype=torch.bool)
                is_app.scatter_(2, order[..., :n_app], True)
                if record:
                    novelty[:, :, a:e] = nov.double()
                if n_app < n:
                    ns = torch.sort(nov, dim=-1).values
                    rec["min_novelty_gap"] = min(rec["min_novelty_gap"],
                                                 float((ns[..., n_app] - ns[..., n_app - 1]).min()))
            # appends first, then merges, each in time order
            sel = torch.sort(is_app.long() * -n * 2 + torch.arange(n), dim=-1).indices
            app_idx, mrg_idx = sel[..., :n_app] + a, sel[..., n_app:] + a
        if n_app:
            sk = torch.cat([sk, _take(ka, app_idx)], dim=2)
            sv = torch.cat([sv, _take(va, app_idx)], dim=2)
            new_len = _take(va, app_idx).norm(dim=-1) if cfg["vlens"] else torch.ones(B, H, n_app, dtype=dt)
            sl = torch.cat([sl, new_len], dim=2)
            if record:
                kind.scatter_(2, app_idx, 2)
                slot.scatter_(2, app_idx, (M + torch.arange(n_app)).expand(B, H, n_app).contiguous())
                upd.scatter_(2, app_idx, u)
        if n_mrg:
            kmr, vmr = _take(km, mrg_idx), _take(vm, mrg_idx)
            with torch.no_grad():
                P = kmr @ ln_s(sk).transpose(-2, -1)  # against the state after appends
                P[..., :S] = float("-inf")            # sinks are never merged into
                tgt = P.argmax(-1)                    # first maximum: lowest index on ties
                if P.shape[-1] - S >= 2:
                    top = P.topk(2, dim=-1).values
                    mg = (top[..., 0] - top[..., 1]).double()
                    rec["min_merge_margin"] = min(rec["min_merge_margin"], float(mg.min()))
                else:
                    mg = torch.full(tgt.shape, 1e30, dtype=torch.float64)
                if record:
                    margin.scatter_(2, mrg_idx, mg)
                    kind.scatter_(2, mrg_idx, 3)
                    slot.scatter_(2, mrg_idx, tgt)
                    upd.scatter_(2, mrg_idx, u)
            sk = sk.scatter_add(2, tgt[..., None].expand(B, H, n_mrg, D), kmr)
            sv = sv.scatter_add(2, tgt[..., None].expand(B, H, n_mrg, D), vmr)
            if not cfg["vlens"]:
                sl = sl.scatter_add(2, tgt, torch.ones(B, H, n_mrg, dtype=dt))
        rec["m_after"].append(sk.shape[2])
        if record:
            rec["trace"].append((sk.detach(), sv.detach(), sl.detach()))
        u += 1

    out = torch.cat(outs, dim=2)
    rec.update(s_k=sk, s_v=sv, s_len=sl, n_updates=u)
    if record:
        rec.update(kind=kind, slot=slot, update=upd, novelty=novelty, merge_margin=margin)
    return out, rec
