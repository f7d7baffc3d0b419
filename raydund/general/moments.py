"""Streaming sufficient statistics of stacked layer activations, in float64.

For activations ``Z [tokens x N]`` (all layers side by side, ``N = sum of layer widths``)
and a fixed per-neuron shift ``k`` (the first chunk's mean), accumulate over chunks of
rows, with ``d_t = z_t - k``:

======  ====================================  ==========================================
``n``   number of tokens
``s``   ``sum_t d_t``                           shifted sums (N)
``G``   ``sum_t d_t d_t^T``                     co-moments (N x N), by layer-pair blocks
``Q``   ``sum_t q_t q_t^T``                     ``q_t^l = ||d_t^l||^2`` (L x L)
``U``   ``sum_t q_t d_t^T``                     (L x N)
======  ====================================  ==========================================

States with the same shift simply add; states with different shifts merge exactly by
Chan's formula (:meth:`Moments.merge`). Everything downstream (Pearson r for every
neuron pair, biased and debiased CKA for every layer pair) is a function of these.
The shift is subtracted before any product: a raw float32 product on uncentred data
loses the correlation of a neuron with a large mean.
"""

from __future__ import annotations

import dataclasses
import mmap

import numpy as np


@dataclasses.dataclass
class Moments:
    """Sufficient statistics of ``Z [tokens x N]`` whose columns are grouped into layers.

    Attributes
    ----------
    widths : tuple of int
        Neurons per layer, in column order (layer 0 first).
    shift : numpy.ndarray
        Per-neuron shift ``k`` subtracted before every product (float64, N).
    n : int
    s, G, Q, U : numpy.ndarray
        See the module docstring. ``G`` may hold only the upper block triangle
        (``blocks_upper=True``) when it was computed block by block; use :meth:`full_G`.
    """

    widths: tuple[int, ...]
    shift: np.ndarray
    n: int = 0
    s: np.ndarray | None = None
    G: np.ndarray | None = None
    Q: np.ndarray | None = None
    U: np.ndarray | None = None

    def __post_init__(self):
        N, L = sum(self.widths), len(self.widths)
        self.shift = np.asarray(self.shift, dtype=np.float64)
        if self.shift.shape != (N,):
            raise ValueError(f"shift has shape {self.shift.shape}, expected ({N},)")
        for name, shape in (("s", (N,)), ("G", (N, N)), ("Q", (L, L)), ("U", (L, N))):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(shape, dtype=np.float64))

    # -- layout ---------------------------------------------------------------------
    @property
    def offsets(self) -> np.ndarray:
        """Column where each layer starts (length L + 1)."""
        return np.concatenate([[0], np.cumsum(self.widths)]).astype(np.int64)

    @classmethod
    def empty(cls, widths, shift) -> Moments:
        """A zero state for layers of the given widths and a shared shift."""
        return cls(widths=tuple(int(w) for w in widths), shift=shift)

    # -- accumulation -----------------------------------------------------------------
    def update(self, Z: np.ndarray, blocks: list[int] | None = None, with_extras: bool = True) -> Moments:
        """Add a chunk of rows ``Z [rows x N]``; returns ``self``.

        Parameters
        ----------
        blocks : list of int, optional
            Only these block rows of ``G`` (layer ``l`` against layers ``m >= l``);
            default all. Lets several tasks share the products of one token slice.
        with_extras : bool
            Also accumulate ``n, s, Q, U`` (exactly one task per token slice does).
        """
        off, L = self.offsets, len(self.widths)
        D = centred_chunk([Z[:, off[l] : off[l + 1]] for l in range(L)], self.shift, off)
        acc: dict = {}
        add_block_rows(acc, D, off, list(range(L)) if blocks is None else blocks, L)
        for l, rows in acc.items():
            if l == "all":
                self.G += rows
            else:
                self.G[off[l] : off[l + 1], off[l] :] += rows
        if with_extras:
            extras(self, [D[:, off[l] : off[l + 1]] for l in range(L)])
        return self

    def add(self, other: Moments) -> Moments:
        """Sum of two states with the same shift (a new state)."""
        if not np.array_equal(self.shift, other.shift) or self.widths != other.widths:
            raise ValueError("add() needs states with the same layers and shift; use merge()")
        return Moments(self.widths, self.shift, self.n + other.n, self.s + other.s, self.G + other.G,
                       self.Q + other.Q, self.U + other.U)

    def full_G(self) -> np.ndarray:
        """``G`` with the lower block triangle filled from the upper one (a new array)."""
        G = np.triu(self.G)
        return G + np.triu(G, 1).T

    # -- results --------------------------------------------------------------------
    @property
    def mean(self) -> np.ndarray:
        return self.shift + self.s / self.n

    def covariance(self) -> np.ndarray:
        """Centred co-moment ``C = G - s s^T / n`` (sum of products about the mean; N x N)."""
        return self.full_G() - np.outer(self.s, self.s) / self.n

    def merge(self, other: Moments) -> Moments:
        """Exact combination of two states with any shifts (Chan et al.), in ``self``'s shift."""
        if self.widths != other.widths:
            raise ValueError("cannot merge states of different layer widths")
        if other.n == 0:
            return dataclasses.replace(self)
        moved = other.reshift(self.shift)
        return self.add(moved)

    def reshift(self, shift: np.ndarray) -> Moments:
        """The same statistics expressed about another shift (exact)."""
        shift = np.asarray(shift, dtype=np.float64)
        delta = self.shift - shift  # d_new = d_old + delta
        n, s, G = self.n, self.s, self.full_G()
        s_new = s + n * delta
        G_new = G + np.outer(s, delta) + np.outer(delta, s) + n * np.outer(delta, delta)
        off, L = self.offsets, len(self.widths)
        # q_new^l = q^l + 2 delta_l . d^l + ||delta_l||^2 per token: expand Q and U
        dn = np.array([delta[off[l] : off[l + 1]] @ delta[off[l] : off[l + 1]] for l in range(L)])
        # per-layer linear forms of d: sum_t (delta_l . d_t^l) x_t  comes from G and s
        # sum (delta_l.d^l) d^T
        P = np.stack([delta[off[l] : off[l + 1]] @ G[off[l] : off[l + 1], :] for l in range(L)])
        ps = np.array([delta[off[l] : off[l + 1]] @ s[off[l] : off[l + 1]] for l in range(L)])  # sum delta_l.d^l
        qsum = np.array([np.trace(G[off[l] : off[l + 1], off[l] : off[l + 1]]) for l in range(L)])  # sum q^l
        # U_new = sum q_new d_new^T, q_new = q + 2 P_lin + dn, d_new = d + delta
        U_new = (self.U + 2 * P + np.outer(dn, s)
                 + np.outer(qsum + 2 * ps + n * dn, delta))
        # Q_new = sum q_new q_new^T
        Pq = np.stack([P[:, off[m] : off[m + 1]] @ delta[off[m] : off[m + 1]] for m in range(L)], axis=1)
        Uq = np.stack([self.U[:, off[m] : off[m + 1]] @ delta[off[m] : off[m + 1]] for m in range(L)], axis=1)
        Q_new = (self.Q + 2 * Uq + 2 * Uq.T + 4 * Pq + np.outer(qsum, dn) + np.outer(dn, qsum)
                 + 2 * np.outer(ps, dn) + 2 * np.outer(dn, ps) + n * np.outer(dn, dn))
        return Moments(self.widths, shift, n, s_new, G_new, Q_new, U_new)


def centred_chunk(mats: list[np.ndarray], shift: np.ndarray, off: np.ndarray) -> np.ndarray:
    """float64 ``[rows x N]`` of all layers minus the shift, in Fortran order.

    Fortran order makes every layer's column block (and every block row ``D[:, off_l:]``)
    a contiguous array that BLAS takes without a copy.
    """
    D = np.empty((len(mats[0]), int(off[-1])), order="F")
    for l, m in enumerate(mats):
        np.subtract(m, shift[off[l] : off[l + 1]], out=D[:, off[l] : off[l + 1]])
    return D


#: Above this many neurons a task that owns every block row keeps one accumulator per block
#: row (``dgemm`` each, the upper block triangle: about half of N x N) instead of one N x N
#: ``dsyrk`` target: half the memory, and no single BLAS call on a 5 GB matrix (SciPy's
#: bundled 32-bit-index OpenBLAS crashed in ``dgemm_oncopy`` on a 25,600 x 25,600 ``dsyrk``).
SYRK_MAX_NEURONS = 16_384


def add_block_rows(acc: dict, D: np.ndarray, off: np.ndarray, rows: list[int], n_layers: int,
                   device: str = "cpu") -> None:
    """``acc[l] += D_l^T D[:, off_l:]`` for each block row; all rows at once is one ``dsyrk``.

    ``acc`` maps a row to its ``[width_l x (N - off_l)]`` array, or ``"all"`` to the
    upper triangle of ``D^T D`` (N x N) when the task owns every row and there are at
    most :data:`SYRK_MAX_NEURONS` neurons.

    Parameters
    ----------
    device : str
        ``"cpu"``: NumPy/SciPy BLAS in float64 (``dsyrk``/``dgemm`` straight into the
        accumulators). Anything else is a torch device (``"cuda"``, ``"cuda:1"``;
        ``"torch:cpu"`` runs the same torch code on the CPU, for tests): the
        accumulators are float64 torch tensors on that device (``"all"`` then holds the
        full product; its upper triangle is what is read). See :func:`to_numpy`.
    """
    if device != "cpu":
        _torch_block_rows(acc, D, off, rows, n_layers, device)
        return
    from scipy.linalg.blas import dgemm, dsyrk

    if sorted(rows) == list(range(n_layers)) and D.shape[1] <= SYRK_MAX_NEURONS:
        if "all" not in acc:
            acc["all"] = fortran_zeros((D.shape[1], D.shape[1]))  # only the upper triangle's pages are taken
        acc["all"] = dsyrk(1.0, D, beta=1.0, c=acc["all"], trans=1, lower=0, overwrite_c=1)
        return
    for l in rows:
        if l not in acc:
            acc[l] = np.zeros((int(off[l + 1] - off[l]), int(off[-1] - off[l])), order="F")
        acc[l] = dgemm(1.0, D[:, off[l] : off[l + 1]], D[:, off[l] :], beta=1.0, c=acc[l], trans_a=1,
                       overwrite_c=1)


def torch_device(device: str):
    """The torch device of a products device name (``"torch:cpu"`` is torch on the CPU)."""
    import torch

    return torch.device("cpu" if device == "torch:cpu" else device)


def _torch_block_rows(acc: dict, D: np.ndarray, off: np.ndarray, rows: list[int], n_layers: int,
                      device: str) -> None:
    """The torch version of :func:`add_block_rows`: float64 products added in place on ``device``."""
    import torch

    # float64 products are never TF32; say so anyway, in case a float32 path is added here
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch_device(device)
    Dt = torch.from_numpy(np.asarray(D, dtype=np.float64)).to(dev)
    N = Dt.shape[1]
    if sorted(rows) == list(range(n_layers)):
        if "all" not in acc:
            acc["all"] = torch.zeros((N, N), dtype=torch.float64, device=dev)
        acc["all"].addmm_(Dt.T, Dt)
        return
    for l in rows:
        a, b = int(off[l]), int(off[l + 1])
        if l not in acc:
            acc[l] = torch.zeros((b - a, N - a), dtype=torch.float64, device=dev)
        acc[l].addmm_(Dt[:, a:b].T, Dt[:, a:])


def to_numpy(acc: dict) -> dict:
    """Accumulators as float64 NumPy arrays (torch tensors are moved to the host one by one)."""
    out = {}
    for key in list(acc):
        value = acc.pop(key)
        out[key] = value.cpu().numpy() if hasattr(value, "cpu") else value
        del value
    return out


def fortran_zeros(shape: tuple[int, int]) -> np.ndarray:
    """A float64 zero matrix in Fortran order on its own anonymous memory map.

    Its pages are taken only when first written (a ``dsyrk`` target holds just its upper
    triangle's pages, about half), and :func:`release_columns` gives pages back to the OS
    while the rest of the matrix stays in use.
    """
    count = int(shape[0]) * int(shape[1])
    buf = mmap.mmap(-1, max(count * 8, 1), flags=mmap.MAP_PRIVATE)  # private: MADV_DONTNEED frees it
    return np.frombuffer(buf, dtype=np.float64, count=count).reshape(shape, order="F")


def _mapping(A: np.ndarray) -> mmap.mmap | None:
    base = A
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return base


def release_columns(A: np.ndarray, a: int, b: int) -> None:
    """Give the pages of columns ``a..b-1`` of a :func:`fortran_zeros` matrix back to the OS.

    Those columns read as zeros afterwards. Only whole pages inside the columns are
    released; for any other array this does nothing.
    """
    buf = _mapping(A)
    if buf is None or not A.flags.f_contiguous or not hasattr(buf, "madvise"):
        return
    start = a * A.shape[0] * 8
    stop = b * A.shape[0] * 8
    start = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    stop = stop // mmap.PAGESIZE * mmap.PAGESIZE
    if stop > start:
        buf.madvise(mmap.MADV_DONTNEED, start, stop - start)


def upper_pieces(A, piece_bytes: int = 64 * 2**20, size: int | None = None):
    """Yield ``(a, b, packed)``: the upper triangle of ``A`` column block by column block.

    ``packed`` holds ``A[:j + 1, j]`` for ``j = a .. b - 1`` (the layout of
    :func:`pack_upper`), about ``piece_bytes`` each; the pages of those columns are
    released (:func:`release_columns`) once packed, so shipping the triangle piece by
    piece never holds it twice. ``A`` may be a NumPy array or a torch tensor on any
    device (a tensor's column block is copied to the host piece by piece). ``size``:
    only the leading ``size x size`` block (default all of ``A``).
    """
    N = A.shape[0] if size is None else int(size)
    a = 0
    while a < N:
        b, nbytes = a, 0
        while b < N and (nbytes == 0 or nbytes + (b + 1) * 8 <= piece_bytes):
            nbytes += (b + 1) * 8
            b += 1
        block = A[:b, a:b]
        block = block.cpu().numpy() if hasattr(block, "cpu") else block
        packed = np.empty(nbytes // 8)
        start = 0
        for j in range(a, b):
            packed[start : start + j + 1] = block[: j + 1, j - a]
            start += j + 1
        del block
        if isinstance(A, np.ndarray):
            release_columns(A, a, b)
        yield a, b, packed
        del packed
        a = b


def add_lower_piece(G: np.ndarray, a: int, packed: np.ndarray) -> None:
    """:func:`add_packed_lower` for one piece of :func:`upper_pieces` (columns from ``a``)."""
    start, j = 0, a
    while start < len(packed):
        G[j, : j + 1] += packed[start : start + j + 1]
        start += j + 1
        j += 1


def pack_upper(A: np.ndarray) -> np.ndarray:
    """The upper triangle of a square matrix, diagonal included, column by column (float64).

    ``N (N + 1) / 2`` values, half of ``A``: what a worker ships to the driver. Column
    ``j`` contributes ``A[:j + 1, j]`` (contiguous when ``A`` is Fortran-ordered).
    """
    N = A.shape[0]
    out = np.empty(N * (N + 1) // 2)
    start = 0
    for j in range(N):
        out[start : start + j + 1] = A[: j + 1, j]
        start += j + 1
    return out


def add_packed_lower(G: np.ndarray, packed: np.ndarray) -> None:
    """``G[j, :j + 1] += column j of the packed upper triangle`` (rows of a C-ordered ``G``).

    The lower triangle of ``G`` then holds the transposed upper triangle; call
    :func:`symmetrize` with ``source="lower"`` when every part is in.
    """
    add_lower_piece(G, 0, packed)


def symmetrize(G: np.ndarray, source: str = "upper", block: int = 1024) -> np.ndarray:
    """Copy one triangle of a square matrix onto the other, in place, strip by strip.

    ``source="upper"``: the upper triangle (diagonal included) is authoritative, as in
    :meth:`Moments.full_G`; ``"lower"``: the lower one. No N x N temporary.
    """
    N = G.shape[0]
    for a in range(0, N, block):
        b = min(N, a + block)
        tile = G[a:b, a:b]
        if source == "upper":
            tile[...] = np.triu(tile) + np.triu(tile, 1).T
            G[b:, a:b] = G[a:b, b:].T
        else:
            tile[...] = np.tril(tile) + np.tril(tile, -1).T
            G[a:b, b:] = G[b:, a:b].T
    return G


def augment_extras(D: np.ndarray, off: np.ndarray) -> None:
    """Fill the ``L + 1`` columns after the ``N`` data columns of a chunk ``D [rows x (N + L + 1)]``
    with ``q_t^l = ||d_t^l||^2`` and ones, so that ONE ``dsyrk`` of the chunk also sums
    ``U`` (``q^T d``), ``s`` (``1^T d``), ``Q`` (``q^T q``) and ``n`` (``1^T 1``): the small
    moments ride along at ``(L + 1) / N`` more products (see :func:`split_augmented`)."""
    N, L = int(off[-1]), len(off) - 1
    for l in range(L):
        block = D[:, off[l] : off[l + 1]]
        np.einsum("ij,ij->i", block, block, out=D[:, N + l])
    D[:, N + L] = 1.0


def split_augmented(A, N: int, L: int) -> dict:
    """``n, s, Q, U`` from the last ``L + 1`` columns of an augmented ``dsyrk`` accumulator
    (:func:`augment_extras`; its upper triangle holds them; a torch tensor is read on the host)."""
    tail = A[:, N:]
    tail = tail.cpu().numpy() if hasattr(tail, "cpu") else tail
    Q = np.triu(tail[N : N + L, :L])
    return {"n": int(round(tail[N + L, L])), "s": tail[:N, L].copy(), "Q": Q + np.triu(Q, 1).T,
            "U": np.ascontiguousarray(tail[:N, :L].T)}


def extras(acc: Moments, Ds: list[np.ndarray]) -> None:
    """Add ``n, s, Q, U`` of centred per-layer rows ``Ds`` to ``acc`` (in place: an accumulator)."""
    off = acc.offsets
    acc.n += Ds[0].shape[0]
    q = np.stack([np.einsum("ij,ij->i", D, D) for D in Ds], axis=1)
    acc.Q += q.T @ q
    for l, D in enumerate(Ds):
        acc.s[off[l] : off[l + 1]] += D.sum(axis=0)
        acc.U[:, off[l] : off[l + 1]] += q.T @ D
