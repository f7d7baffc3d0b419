"""Independent reference implementations the tests compare raydund's statistics against."""

import numpy as np


def ref_cka(X, Y):
    """Kornblith et al. 2019 in Gram form (what the google-research notebook does)."""
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    K, L = X @ X.T, Y @ Y.T
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def ref_debiased(X, Y):
    """Unbiased HSIC (Song et al. 2007) with Gram matrices, then CKA."""
    def hsic(K, L):
        n = K.shape[0]
        K, L = K.copy(), L.copy()
        np.fill_diagonal(K, 0)
        np.fill_diagonal(L, 0)
        hsic = np.sum(K * L) + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * K.sum(0) @ L.sum(0)
        return hsic / (n * (n - 3))
    X, Y = X - X.mean(0), Y - Y.mean(0)
    K, L = X @ X.T, Y @ Y.T
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def ref_mutual_knn(X, Y, k):
    """Huh et al. 2024's mutual k-NN alignment, one token at a time with Python sets (cosine, self excluded)."""
    def neighbours(Z, i):
        U = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        sims = U @ U[i]
        order = [j for j in np.argsort(-sims, kind="stable") if j != i]
        return set(order[:k])
    return float(np.mean([len(neighbours(X, i) & neighbours(Y, i)) / k for i in range(len(X))]))
