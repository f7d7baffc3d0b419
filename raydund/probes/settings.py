"""The probe hyperparameters, defined once.

:class:`ProbeSettings` is the one place the probe settings (task, penalties, optimizer,
batches, epochs, seed, standardization, precision) and their defaults (the paper's) are
declared. :class:`~raydund.probes.model.ProbeBank`,
:class:`~raydund.probes.job.ProbeConfig` and :class:`~raydund.transfer.job.TransferConfig`
derive from it, and ``raydund probe`` / ``raydund transfer`` take their options from its
fields. No torch here: the CLI imports it to build its options.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(kw_only=True)
class ProbeSettings:
    """The paper's probe settings (all configurable; keyword-only, so subclasses add required fields).

    The loss follows NeuroX's "ElasticNet": mean cross-entropy (or MSE) + ``l1 * sum|W|`` +
    ``l2 * ||W||_2`` (the norm, not its square; weights only).

    Attributes
    ----------
    task : {"classification", "regression"}
        Softmax probes on class labels, or linear probes on scores (Pearson, Spearman).
    l1 : float
        L1 penalty of the probes' weights.
    l2 : float
        L2 penalty (on the norm of each probe's weights).
    lr : float
        Adam learning rate.
    batch_size : int
        Rows per training step.
    epochs : int
        Passes over the training rows (shuffled each epoch).
    seed : int
        Seeds the probes' initial weights and the batch order.
    standardize : bool
        Train on z-scored neurons (train mean and std, float64; constant neurons left as
        they are). Off by default (the paper and NeuroX train on raw activations); it helps
        where activations barely vary, such as the [CLS] of lower layers.
        The fitted weights are folded back to raw activations either way.
    precision : {"auto", "float32", "bfloat16"}
        Type of the training products (bfloat16: float32 accumulation, 2-4x faster on CPUs
        with AVX-512-BF16/AMX; auto: bfloat16 where the device has it natively, else float32).
    """

    task: str = "classification"
    l1: float = 1e-5
    l2: float = 1e-5
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 10
    seed: int = 0
    standardize: bool = False
    precision: str = "auto"

    def settings(self) -> ProbeSettings:
        """Just the probe settings of this object (a config or a bank derived from this class)."""
        return ProbeSettings(**probe_fields(self))

    def bank(self, masks):
        """An untrained :class:`~raydund.probes.model.ProbeBank` of probes ``masks`` with these settings."""
        from raydund.probes.model import ProbeBank

        return ProbeBank(masks, **probe_fields(self))


def probe_fields(obj) -> dict:
    """The values of :class:`ProbeSettings`' fields on ``obj`` (any object derived from it)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(ProbeSettings)}
