"""kvm_ref.py (the independent PyTorch KVM layer) against the paper's reference fixtures
(tests/fixtures/kvm/*.h5, see their README): output, final state, the state after every update,
the schedule (fold ranges, budget inputs, slots before/after, appends), every routing decision
(kind, slot, update), novelty and merge margins, and every gradient of sum(out * dout).

Everything is computed in float64 from the stored float32 inputs, as the fixtures were, so the
only difference left is the fixtures' float32 storage. Tolerance, per tensor:
    max |ours - fixture| <= 1e-6 * max(1, max |fixture|)
(float32 storage rounds at 6e-8 relative; the fixtures' own float32-vs-float64 yardstick,
fp32_ref_max_abs_err_*, is 1e-6 .. 3e-6, which an fp32 implementation needs on top.)
Integers (schedule, routing) must match exactly.

Usage: /usr/bin/python3 test_kvm_ref_fixture.py [FIXTURE_DIR]   (exit status 0 = all passed)
"""
import glob
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvm_ref import kvm_attention  # noqa: E402

TOL = 1e-6


def attr(f, name):
    a = f.attrs[name]
    return a.decode() if isinstance(a, bytes) else a


def check_fixture(path):
    failures = []
    f = h5py.File(path, "r")
    name = os.path.basename(path)
    cfg = dict(C=int(attr(f, "C")), W=int(attr(f, "W")), S=int(attr(f, "S")), R=int(attr(f, "R")),
               budget=attr(f, "budget_mode"), min_len=int(attr(f, "min_len")), power_f=float(attr(f, "power_f")),
               power_e=float(attr(f, "power_e")), sat_n=int(attr(f, "sat_n")), max_slots=int(attr(f, "Mmax")),
               vlens=bool(attr(f, "use_vlens")), head_temps=bool(attr(f, "use_head_temps")),
               merge_gate_keys=bool(attr(f, "merge_gate_keys")), merge_gate_values=bool(attr(f, "merge_gate_values")),
               gate_appends=bool(attr(f, "gate_appends")), gate_initial_state=bool(attr(f, "gate_initial_state")),
               ln_eps=float(attr(f, "ln_eps")))

    def t64(p, grad=True):
        return torch.from_numpy(f[p][()].astype(np.float64)).requires_grad_(grad)

    q, k, v, g = (t64("inputs/" + n) for n in "qkvg")
    lw, lb = t64("params/ln_s_weight"), t64("params/ln_s_bias")
    tf, ts = t64("params/tau_front"), t64("params/tau_state")
    dout = t64("inputs/dout", False)
    out, rec = kvm_attention(q, k, v, g, lw, lb, tf, ts, cfg, record=True)
    (out * dout).sum().backward()

    def close(what, ours, ref):
        ours = ours.detach().numpy() if torch.is_tensor(ours) else np.asarray(ours)
        ref = np.asarray(ref, dtype=np.float64)
        if ours.shape != ref.shape:
            failures.append(f"{what}: shape {ours.shape} vs fixture {ref.shape}")
            return
        err = float(np.abs(ours - ref).max()) if ref.size else 0.0
        scale = max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
        ok = err <= TOL * scale
        print(f"  {what:22s} max|diff| {err:.3e}  (max|ref| {scale:.3g}){'' if ok else '  FAIL'}")
        if not ok:
            failures.append(f"{what}: max |diff| {err:.3e} > {TOL * scale:.3e}")

    def exact(what, ours, ref):
        ours = np.asarray(ours.numpy() if torch.is_tensor(ours) else ours, dtype=np.int64)
        ref = np.asarray(ref, dtype=np.int64)
        if ours.shape != ref.shape or not np.array_equal(ours, ref):
            bad = np.argwhere(ours != ref)[:5] if ours.shape == ref.shape else "shape"
            failures.append(f"{what}: differs (first at {bad})")
            print(f"  {what:22s} DIFFERS")
        else:
            print(f"  {what:22s} exact ({ref.size} values)")

    print(f"{name}: budget {cfg['budget']}, T {q.shape[2]}, updates {rec['n_updates']}, "
          f"slots after each {rec['m_after']}")
    close("out", out, f["outputs/out"][()])
    for n in ("s_k", "s_v", "s_len"):
        close("state/" + n, rec[n], f["state/" + n][()])
    for n in ("begin", "end", "ctx_len", "avail", "m_before", "m_after", "n_append"):
        exact("schedule/" + n, rec[n], f["schedule/" + n][()])
    for n in ("kind", "slot", "update"):
        exact("routing/" + n, rec[n], f["routing/" + n][()])
    for n in ("novelty", "merge_margin"):
        ref = f["routing/" + n][()].astype(np.float64)
        ours = rec[n].numpy()
        if not np.array_equal(np.isnan(ref), np.isnan(ours)):
            failures.append(f"routing/{n}: defined for different tokens")
        m = ~np.isnan(ref) & (ref < 1e29)
        close("routing/" + n, ours[m], ref[m])
    U, Mf = rec["n_updates"], int(attr(f, "M_final"))
    for i, n in enumerate(("s_k", "s_v", "s_len")):
        tr = np.zeros(f["trace/" + n].shape)
        for u in range(U):
            x = rec["trace"][u][i].numpy()
            tr[u, :, :, : x.shape[2]] = x
        close("trace/" + n, tr, f["trace/" + n][()])
    grads = {"dq": q, "dk": k, "dv": v, "dg": g, "d_ln_s_weight": lw, "d_ln_s_bias": lb, "d_tau_front": tf,
             "d_tau_state": ts}
    for n, x in grads.items():
        gx = x.grad if x.grad is not None else torch.zeros_like(x)
        close("grads/" + n, gx, f["grads/" + n][()])
    if int(attr(f, "n_updates")) != U or rec["s_k"].shape[2] != Mf:
        failures.append("n_updates / M_final differ")
    mm, ng = rec["min_merge_margin"], rec["min_novelty_gap"]
    print(f"  min merge margin {mm:.4g} (fixture {attr(f, 'min_merge_margin'):.4g}), "
          f"min novelty gap {ng:.4g} (fixture {attr(f, 'min_novelty_gap'):.4g})")
    return [f"{name}: {x}" for x in failures]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "fixtures", "kvm")
    files = sorted(glob.glob(os.path.join(d, "*.h5")))
    if len(files) < 4:
        print(f"expected the four fixtures in {d}, found {len(files)}")
        return 1
    torch.set_num_threads(1)
    failures = []
    for p in files:
        failures += check_fixture(p)
    print("\n".join(failures) if failures else f"all {len(files)} fixtures match")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
