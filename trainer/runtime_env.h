#pragma once
// OpenMP and OpenBLAS each keep a thread pool; when both spin-wait on 2 cores they steal each
// other's time slices (measured on GPT-2 124M, B=4 T=64: 121 tok/s spinning, 211 tok/s passive).
// Both runtimes read their settings when the process loads, so kvmtrain sets
// OMP_WAIT_POLICY=PASSIVE and OPENBLAS_THREAD_TIMEOUT=4 (each unless the user set it) and
// re-executes itself once. Call first thing in main().
void ensure_runtime_env(char** argv);
