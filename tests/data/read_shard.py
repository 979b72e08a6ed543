"""Reads a kvmtrain token shard with h5py (an independent HDF5 reader) and prints it as JSON:
{"attrs": {...}, "tokens": [...], "doc_offsets": [...], "tokens_dtype": "...", "chunks": [...]}."""
import json
import sys

import h5py

with h5py.File(sys.argv[1], "r") as f:
    attrs = {k: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v)
             for k, v in f.attrs.items()}
    print(json.dumps({
        "attrs": attrs,
        "tokens": f["tokens"][:].tolist(),
        "tokens_dtype": str(f["tokens"].dtype),
        "chunks": list(f["tokens"].chunks or []),
        "doc_offsets_dtype": str(f["doc_offsets"].dtype),
        "doc_offsets": f["doc_offsets"][:].tolist(),
    }))
