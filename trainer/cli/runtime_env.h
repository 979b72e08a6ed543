#pragma once
// OpenMP and OpenBLAS each keep a thread pool; when both spin-wait on 2 cores they steal each
// other's time slices. The step's GEMMs run on oneDNN, in OpenMP's pool, so OpenMP keeps its
// default brief spin (which a step of ~500 parallel regions needs: sleeping threads cost GPT-2
// 124M 3-4% MFU, docs/decisions.md) and OpenBLAS, which only the MFU yardstick's comparison
// calls, sleeps soon: kvmtrain sets OPENBLAS_THREAD_TIMEOUT=4 unless the user set
// it, and re-executes itself once, as OpenBLAS reads it when the process loads. Call first thing
// in main().
void ensure_runtime_env(char** argv);
