"""What a training step minimises, per method. Both return the loss summed over the samples
(the step scales it to a mean over the global batch) and what the memory bank records of each
sample (None for v1); `blank` is the zero loss of a rank whose part of a step is empty (DDP
needs every rank to make the same passes)."""
import torch
import torch.nn.functional as F


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """The layout the model's convs run fastest in on CPU (oneDNN), as the model itself."""
    return images.contiguous(memory_format=torch.channels_last)


class Classification:
    """DeepCluster: cross-entropy of the round's fresh top layer against the pseudo-label."""

    def loss(self, net, images: torch.Tensor, labels: torch.Tensor) -> tuple:
        return F.cross_entropy(net(channels_last(images)), labels, reduction="sum"), None

    def blank(self, net, images: torch.Tensor) -> torch.Tensor:
        return net(images.new_zeros((1, *images.shape[1:]))).sum() * 0.0


class PrototypeMatching:
    """DeepCluster-v2: every crop of an image predicts the image's assignment in every head,
    through the fixed prototypes; cross-entropy averaged over heads and crops."""

    def __init__(self, unpack):
        self.unpack = unpack  # packed samples -> list of crops (multicrop.MultiCrop.unpack)

    def loss(self, net, images: torch.Tensor, labels: torch.Tensor) -> tuple:
        """(loss, bank rows): the bank row of an image is the normalised mean of its two
        full-size crops' projections (crops 0 and 1, SwAV's crops_for_assign)."""
        crops = [channels_last(c) for c in self.unpack(images)]
        heads, z = net(crops, with_projection=True)  # per head: (crops x n, k), crop after crop
        targets = labels.view(len(images), -1)
        total = sum(F.cross_entropy(logits, targets[:, h].repeat(len(crops)), reduction="sum")
                    for h, logits in enumerate(heads))
        n, big = len(images), z.detach().float()
        return total / (len(heads) * len(crops)), F.normalize(big[:n] + big[n:2 * n], dim=1)

    def blank(self, net, images: torch.Tensor) -> torch.Tensor:
        crops = self.unpack(images.new_zeros((1, *images.shape[1:])))
        return sum(logits.sum() for logits in net(crops)) * 0.0
