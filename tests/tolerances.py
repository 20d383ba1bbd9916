"""Tolerances for comparing floating-point results computed two ways (chunked and whole, shared and per-sequence,
DeepSpeed and DDP, the engine and the policy).

The two sides of such a comparison sum the same terms in another order, and the order also depends on the CPU's
vector width (AVX2, AVX-512, ARM's NEON) and the number of threads, so they differ by a few units in the last place
*of the values compared*: a float32 value near 8 has an ulp of 9.5e-7, so an absolute tolerance of 1e-6 alone is one
ulp there and passes only on the CPU it was tuned on. Every float32 comparison therefore scales with the values
(``rtol=F32_RTOL``) beside its absolute tolerance for values near 0. Comparisons that claim exactness (a resumed run
against a straight one, on one machine) keep ``rtol=0, atol=0``; float64 references keep their tight absolute
tolerances, which are thousands of float64 ulps even at the largest values compared.
"""

from __future__ import annotations

import torch

#: float32's machine epsilon (2**-23), the spacing of float32 values in [1, 2).
FLOAT32_EPS = torch.finfo(torch.float32).eps

#: Relative tolerance of a float32 comparison between two summation orders: a few ulps of the values compared.
F32_RTOL = 4 * FLOAT32_EPS
