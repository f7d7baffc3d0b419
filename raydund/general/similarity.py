"""From :class:`~raydund.general.moments.Moments` to Pearson r and linear CKA.

* Pearson r for every neuron pair: ``r_ij = C_ij / sqrt(C_ii C_jj)``.
* Linear CKA for every layer pair (Kornblith et al. 2019, feature space):
  ``||C_lm||_F^2 / (||C_ll||_F ||C_mm||_F)``.
* Debiased linear CKA (unbiased HSIC of Song et al. 2007 in feature space, as in the
  google-research CKA notebook), streamed through ``Q`` and ``U``: biased CKA has a
  floor near ``width / tokens`` on unrelated data, the debiased one does not.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raydund.general.moments import Moments, symmetrize

#: Relative variance below which a neuron counts as constant (of the median variance).
CONSTANT_TOL = 1e-12


def constant_neurons(C: np.ndarray, tol: float = CONSTANT_TOL) -> np.ndarray:
    """Boolean mask of neurons whose variance is (numerically) zero (``C``: N x N, or its diagonal)."""
    var = np.diag(C) if np.ndim(C) == 2 else np.asarray(C)
    scale = np.median(var[var > 0]) if np.any(var > 0) else 1.0
    return var <= tol * scale


def pearson(C: np.ndarray, constant: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation from a centred co-moment matrix (a new array; see :func:`pearson_inplace`).

    Rows and columns of constant neurons are NaN (their correlation is undefined);
    the diagonal is exactly 1 elsewhere and values are clipped to [-1, 1].
    """
    return pearson_inplace(np.array(C, dtype=np.float64), constant)


def pearson_inplace(C: np.ndarray, constant: np.ndarray | None = None, block: int = 1024) -> np.ndarray:
    """:func:`pearson` that overwrites ``C`` with r, row block by row block (no N x N temporary)."""
    var = np.diag(C).copy()
    constant = constant_neurons(var) if constant is None else constant
    sd = np.sqrt(np.where(constant, np.nan, var))
    for a in range(0, len(C), block):
        rows = C[a : a + block]
        rows /= sd[a : a + block, None]
        rows /= sd[None, :]
        np.clip(rows, -1.0, 1.0, out=rows)
    idx = np.flatnonzero(~constant)
    C[idx, idx] = 1.0
    return C


def _blocks(C: np.ndarray, m: Moments):
    off = m.offsets
    return [[C[off[a] : off[a + 1], off[b] : off[b + 1]] for b in range(len(m.widths))] for a in range(len(m.widths))]


def cka(C: np.ndarray, m: Moments) -> np.ndarray:
    """Biased linear CKA between every pair of layers (L x L)."""
    B = _blocks(C, m)
    L = len(m.widths)
    hsic = np.array([[np.sum(B[a][b] ** 2) for b in range(L)] for a in range(L)])
    norm = np.sqrt(np.diag(hsic))
    with np.errstate(invalid="ignore", divide="ignore"):
        return hsic / norm[:, None] / norm[None, :]


def debiased_cka(C: np.ndarray, m: Moments) -> np.ndarray:
    """Debiased linear CKA between every pair of layers (L x L), from streamed ``Q`` and ``U``."""
    n, L, off = m.n, len(m.widths), m.offsets
    if n < 4:
        raise ValueError("debiased CKA needs at least 4 tokens")
    v = m.s / n  # mean of the shifted data
    G = m.full_G()
    B = _blocks(C, m)
    spans = [slice(off[a], off[a + 1]) for a in range(L)]
    hsic = np.array([[np.sum(B[a][b] ** 2) for b in range(L)] for a in range(L)])
    tr = np.array([np.trace(B[a][a]) for a in range(L)])
    trG = np.array([np.trace(G[sa, sa]) for sa in spans])
    vGv = np.array([[4 * v[sa] @ G[sa, sb] @ v[sb] for sb in spans] for sa in spans])
    return _debiased(hsic, tr, trG, vGv, m, v)


@dataclasses.dataclass
class Similarity:
    """Everything the general-redundancy analysis reads from one pass.

    Attributes
    ----------
    r : numpy.ndarray
        Pearson r (N x N), NaN rows/columns for constant neurons.
    cka, cka_debiased : numpy.ndarray
        L x L.
    constant : numpy.ndarray
        Boolean mask (N) of constant neurons.
    mean, std : numpy.ndarray
        Per-neuron mean and standard deviation.
    """

    r: np.ndarray
    cka: np.ndarray
    cka_debiased: np.ndarray
    constant: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int
    widths: tuple[int, ...]


def similarity(m: Moments, inplace: bool = False, block: int = 1024) -> Similarity:
    """Pearson r, biased and debiased CKA, constant neurons, from one set of moments.

    Memory: one N x N float64 array. ``G`` is made symmetric, everything CKA needs from
    ``G`` is read, then it becomes the covariance and then r in place, row block by row
    block. With ``inplace`` that array is ``m.G`` itself (the moments are consumed: their
    ``G`` IS the returned ``r`` afterwards); otherwise a copy of it.
    """
    G = m.G if inplace else m.G.copy()
    symmetrize(G, "upper", block)
    n, L, off, s = m.n, len(m.widths), m.offsets, m.s
    if n < 4:
        raise ValueError("debiased CKA needs at least 4 tokens")
    v = s / n  # mean of the shifted data
    spans = [slice(off[a], off[a + 1]) for a in range(L)]
    # what debiased CKA needs from G (not from C): traces and v_a^T G_ab v_b
    trG = np.array([np.trace(G[sa, sa]) for sa in spans])
    vGv = np.zeros((L, L))
    for a in range(L):
        for b in range(a, L):
            vGv[a, b] = 4 * v[spans[a]] @ G[spans[a], spans[b]] @ v[spans[b]]
    for a in range(0, len(G), block):  # G -> C = G - s s^T / n
        G[a : a + block] -= np.outer(s[a : a + block], s) / n
    C = G
    var = np.diag(C).copy()
    constant = constant_neurons(var)
    hsic = np.array([[np.sum(C[sa, sb] ** 2) for sb in spans] for sa in spans])
    tr = np.array([np.trace(C[sa, sa]) for sa in spans])
    norm = np.sqrt(np.diag(hsic))
    with np.errstate(invalid="ignore", divide="ignore"):
        biased = hsic / norm[:, None] / norm[None, :]
    debiased = _debiased(hsic, tr, trG, vGv, m, v)
    return Similarity(
        r=pearson_inplace(C, constant, block), cka=biased, cka_debiased=debiased, constant=constant,
        mean=m.mean, std=np.sqrt(np.clip(var, 0, None) / max(n - 1, 1)), n=n, widths=m.widths,
    )


def _debiased(hsic: np.ndarray, tr: np.ndarray, trG: np.ndarray, vGv: np.ndarray, m: Moments,
              v: np.ndarray) -> np.ndarray:
    """Debiased CKA from precomputed block sums (the same terms as :func:`debiased_cka`)."""
    n, L, off = m.n, len(m.widths), m.offsets
    vv = np.array([v[off[a] : off[a + 1]] @ v[off[a] : off[a + 1]] for a in range(L)])
    h = np.zeros((L, L))
    for a in range(L):
        sa = slice(off[a], off[a + 1])
        for b in range(a, L):
            sb = slice(off[b], off[b + 1])
            S = (m.Q[a, b] - 2 * m.U[a, sb] @ v[sb] - 2 * m.U[b, sa] @ v[sa]
                 + vGv[a, b] + vv[b] * trG[a] + vv[a] * trG[b] - 3 * n * vv[a] * vv[b])
            h[a, b] = h[b, a] = (hsic[a, b] - n / (n - 2) * S + tr[a] * tr[b] / ((n - 1) * (n - 2)))
    norm = np.sqrt(np.clip(np.diag(h), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return h / norm[:, None] / norm[None, :]
