"""v1's top layer fitted to the round's clusters before the first step (`head_init = "fitted"`).

The paper starts every round from a fresh N(0, 0.01) top layer, so a short round spends its first
steps re-learning it while the gradients reaching the body are noise. Fitted, it starts as the
linear discriminant of the round's clusters on what the top layer sees: the network's classifier
output for the round's first draws, augmented as training augments them. Class means and one
shared covariance (shrunk toward its mean variance, as the fit has ~50 samples a cluster in a
1,000-odd-d space), summed over ranks so that every rank starts from the same layer. Only its
directions are fitted: its rows keep the size of the random layer's, so the first steps' gradients
into the body are no larger than the paper's (the raw discriminant's, 10x that size on CIFAR-10,
blow up a small network).
"""
import torch

SAMPLES_PER_CLUSTER = 50
SHRINKAGE = 0.1  # share of the covariance replaced by its mean variance times the identity


class ClusterMoments:
    """Per-cluster sums and counts and the overall second moment of the top layer's inputs."""

    def __init__(self, k: int, dim: int):
        self.sums = torch.zeros(k, dim, dtype=torch.float64)
        self.counts = torch.zeros(k, dtype=torch.float64)
        self.second = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        x = inputs.detach().double().cpu()
        self.sums.index_add_(0, labels.cpu(), x)
        self.counts += torch.bincount(labels.cpu(), minlength=len(self.counts)).double()
        self.second += x.T @ x

    def over_ranks(self, ctx) -> "ClusterMoments":
        """The sums of every rank's moments (every rank gets them)."""
        self.sums, self.counts, self.second = (ctx.sum(t) for t in (self.sums, self.counts,
                                                                     self.second))
        return self

    def discriminant(self, row_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight k x dim, bias k) float32: logit_j(x) = c (m_j - m)' S^-1 (x - (m_j + m) / 2),
        which ranks clusters as the Gaussian classifier with shared covariance S does; c makes
        the mean norm of the weight rows `row_norm`. A cluster the fit drew no sample of gets the
        overall mean m: weight 0, logit 0."""
        n = self.counts.sum()
        overall = self.sums.sum(0) / n
        drawn = self.counts > 0
        means = torch.where(drawn[:, None], self.sums / self.counts.clamp(min=1)[:, None], overall)
        within = (self.second - means.T @ (means * self.counts[:, None])) / n
        dim = len(within)
        cov = (1 - SHRINKAGE) * within + SHRINKAGE * within.trace() / dim * torch.eye(
            dim, dtype=torch.float64)
        centred = means - overall
        weight = torch.linalg.solve(cov, centred.T).T
        bias = -0.5 * (weight * (means + overall)).sum(1)
        size = weight[drawn].norm(dim=1).mean()
        scale = row_norm / size if size > 0 else 0.0
        return (weight * scale).float(), (bias * scale).float()


def fit_samples(k: int, world: int) -> int:
    """Draws each rank feeds the fit."""
    return -(-SAMPLES_PER_CLUSTER * k // world)
