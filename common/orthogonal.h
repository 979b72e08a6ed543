#pragma once
// Orthogonal initialisation with torch.nn.init.orthogonal_'s distribution.
#include "common/rng.h"

// dst (rows, cols), row-major: the Q factor of the QR decomposition of a Gaussian matrix (of its
// transpose when rows < cols), sign-corrected so that R's diagonal is positive, times gain. So
// W W^T = gain^2 I when rows <= cols (orthonormal rows), W^T W = gain^2 I otherwise. The Gaussian
// matrix is fill_normal(dst, rows * cols, 1, rng)'s, and rng is left where that call leaves it.
// Computed in double; the same bits for every number of OpenMP threads.
void fill_orthogonal(float* dst, int rows, int cols, float gain, Rng& rng);
