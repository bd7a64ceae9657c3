"""How a protocol's teacher sees a distilled set beside real images of the same count: its accuracy on the set's
images (their class-major class), its mean max-probability and entropy, on the images and on the crops the kd
trainer draws. A set the teacher finds ambiguous gives it little to teach under kd, whatever it scores elsewhere.

    python benchmarks/teacher_view.py ARTIFACT [ARTIFACT ...]                     # the eval=kd teacher
    python benchmarks/teacher_view.py ARTIFACT --set eval=cda --set "eval.teacher.models=[convnet_bn]"
"""

from __future__ import annotations

import argparse

import torch

from ddbench.api import compose_config
from ddbench.artifact import load_artifact
from ddbench.data import load_dataset
from ddbench.evaluation import EvalProtocol, Evaluator
from ddbench.training.recipe import crop_padding_for, data_flip
from ddbench.training.transforms import random_crop_flip

CROP_DRAWS = 20  # crops per image


def view(teacher, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    with torch.no_grad():
        p = teacher(x).softmax(1)
    acc = (p.argmax(1) == y).float().mean().item()
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean().item()
    print(f"{name:<28} n={len(x):<5} teacher accuracy {100 * acc:5.1f} %  mean max-prob {p.max(1).values.mean():.3f}"
          f"  entropy {entropy:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--set", action="append", default=[], help="a config override (default: eval=kd)")
    args = parser.parse_args()
    overrides = args.set if any(o.startswith("eval=") for o in args.set) else ["eval=kd", *args.set]
    first = load_artifact(args.artifacts[0])
    cfg = compose_config([f"dataset={first.dataset}", *overrides])
    splits = load_dataset(first.dataset)
    teacher = Evaluator(splits, EvalProtocol.from_dict(cfg["eval"])).teacher
    print("teacher:", teacher.summary())
    pad, g = crop_padding_for(splits.info.image_size), torch.Generator().manual_seed(0)
    for path in args.artifacts:
        artifact = load_artifact(path)
        x, _ = artifact.training_set()
        y, ipc = artifact.class_of(), int(artifact.ipc)
        labels = splits.train.labels
        real = torch.cat([torch.nonzero(labels == c).flatten()[torch.randperm(int((labels == c).sum()), generator=g)[:ipc]]
                          for c in range(splits.info.num_classes)])
        for name, images, classes in ((f"{artifact.meta.get('method')} ipc{ipc}", x, y),
                                      (f"real ipc{ipc}", splits.train.images[real], labels[real])):
            view(teacher, name, images, classes)
            crops = random_crop_flip(images.repeat(CROP_DRAWS, 1, 1, 1), g, pad, data_flip(splits.info))
            view(teacher, f"{name} crops", crops, classes.repeat(CROP_DRAWS))


if __name__ == "__main__":
    main()
