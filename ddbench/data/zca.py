"""ZCA whitening (kornia's zca_mean, eps 0.1 as in the trajectory-matching repos) with its inverse."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ZCA:
    """x_zca = (x - mean) @ transform on flattened images; inverse: x_zca @ inverse + mean.

    mean: [D]; transform, inverse: [D, D] with D = C*H*W.
    """

    mean: torch.Tensor
    transform: torch.Tensor
    inverse: torch.Tensor
    eps: float = 0.1

    @classmethod
    def fit(cls, images: torch.Tensor, eps: float = 0.1) -> "ZCA":
        """Fit on raw (unnormalized) images [N,C,H,W] with the unbiased covariance."""
        from kornia.enhance import zca_mean

        flat = images.flatten(1).double()
        transform, mean, inverse = zca_mean(flat, dim=0, unbiased=True, eps=eps, return_inverse=True)
        return cls(mean.flatten().float(), transform.float(), inverse.float(), eps)

    def apply(self, images: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        out = torch.empty_like(images)
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk].flatten(1)
            out[start : start + chunk] = ((part - self.mean) @ self.transform).view_as(images[start : start + chunk])
        return out

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(1) @ self.inverse + self.mean
        return flat.view_as(images)

    def to(self, device: torch.device | str) -> "ZCA":
        return ZCA(self.mean.to(device), self.transform.to(device), self.inverse.to(device), self.eps)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"zca_mean": self.mean, "zca_transform": self.transform, "zca_inverse": self.inverse}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], eps: float) -> "ZCA":
        return cls(tensors["zca_mean"], tensors["zca_transform"], tensors["zca_inverse"], eps)
