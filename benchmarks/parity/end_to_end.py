"""End to end beside the reference: one small distillation run by ddbench and by the reference's own loop, on the
same data, both sets evaluated by ddbench's evaluator; mean ± std over seeds.

    python benchmarks/parity/end_to_end.py datadam --reference /path/to/DataDAM
    python benchmarks/parity/end_to_end.py dq --reference /path/to/Dataset_Quantization
    python benchmarks/parity/end_to_end.py cda --reference /path/to/SRe2L
    python benchmarks/parity/end_to_end.py infer --reference /path/to/UFC

The step-level scripts beside this one (datadam.py, dq.py, ...) show that each piece agrees at float rounding on
the same inputs. This one runs the whole loop: the data are the first --per-class training images per class of
--dataset (default Fashion-MNIST; normalized by ddbench, the same tensors on both sides), both sides distill
--ipc images per class with the same settings, and each set is evaluated once per seed by `ddbench.evaluate`
under the method's protocol (`dc` for datadam and dq, `cda` for cda, `infer` for infer) on --model for --eval-epochs epochs (the
evaluation seed = the distillation seed). The table prints, per side, the mean ± std test accuracy over --seeds
seeds and the distillation time.

- datadam: the reference's main_DataDAM.py main(), from `image_syn = torch.randn(...)` through its training loop
  (edited as listed: cuda → cpu; its evaluation pool empty, so it only distills), with its own get_network
  (BatchNorm ConvNet, reseeded from the clock each iteration), DiffAugment (seeded from the clock) and
  get_attention (p = 1); its get_images draws from the shared data with numpy's generator seeded per run. ddbench
  runs `experiment=datadam_code` (p = 1, BatchNorm) with the same iterations, batch_real, lr and DSA strategy.
  The random networks and DSA draws come from different streams on the two sides, so the sets differ; the
  accuracies should agree within their seed spread.
- dq: the reference's quantize_sample.py bin loop (its bundled DeepCore: GraphCut on gradient embeddings, see
  dq.py) on the shared data with ddbench's trained embedding network copied into the reference's ResNet-18, then
  the reference's sampling of --ipc images per class over the bins; ddbench runs method=dq with
  method.gradient=reference, method.pixel=false and the same network (its embedding cache entry). Same network,
  same data: the bins are the same (dq.py checks them index for index); the uniform draws within the bins come
  from different generators (numpy's per bin there, torch's here), so the sets differ by those draws. The
  reference's patch stage needs downloaded MAE and ImageNet weights and is left out on both sides.
- cda: CDA's recover_cda_tiny.py get_images() for every ipc_id (edited as listed: its 200 classes, 64 px and 3
  channels (of its N(0, 1) draw) become the data's; cuda → cpu; its Tiny-ImageNet clip/denormalise use the data's mean/std; the images
  it would write as 8-bit JPEGs are kept as float tensors, as ddbench keeps them), given ddbench's own cached
  teacher (ConvNet-BN, --teacher-epochs on the shared subset; a fresh copy per ipc_id, as its main_syn loads the
  checkpoint once per ipc_id) and ddbench's recover settings (lr 0.25, r_bn 0.01, jitter 4, cosine crop
  curriculum, first BN x10, --iterations steps). ddbench runs method=cda with the same teacher block. Both sets are
  relabelled online by that same teacher under eval=cda (teacher BatchNorm in train mode, as the reference's
  relabel script). The crop boxes, flips and rolls come from different streams (torchvision's and Python's global
  generators there, ddbench's generator here), so the sets differ by those draws.
- infer: UFC's ufc_cifar.py get_images() for every ipc_id (edited as listed: its UFC's 3 x 32 x 32 become the
  data's shape; cuda → cpu; clip_image / denormalize_image use the data's mean/std; its removal of the third
  teacher's second BN, EfficientNet-B0's unused one, is skipped, since the third teacher here is VGG-11-BN; the
  saved images are kept as float tensors), given ddbench's own cached ensemble (ConvNet-BN, MobileNetV2 at half
  width, VGG-11-BN, as the Fashion-MNIST preset, --teacher-epochs each; fresh copies per ipc_id, as its
  generation() loads them per ipc_id) and ipc_init = floor(IPC / (1 + M/C)) real groups drawn per class with
  numpy's generator seeded per run (its init tensor_k.pt files). ddbench runs method=infer with the same teacher
  block. Both sets are labelled once by the mean logits of that same ensemble under eval=infer (static labels, as
  its val_static.py). The real groups and the roll offsets come from different streams, so the sets differ.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from common import Edits, extract, quiet, reference_commit

import ddbench
from ddbench.data.tensors import load_dataset


def reference_datadam(ref: Path, data: SimpleNamespace, seed: int, opts: argparse.Namespace
                      ) -> tuple[torch.Tensor, torch.Tensor, list[Edits]]:
    """The reference's DataDAM loop on `data`: (images [K*ipc,C,H,W] normalized, labels [K*ipc], edits)."""
    from datadam import reference_code  # its utils (get_network, DiffAugment, get_attention), edited

    utils, _, (utils_edits, _) = reference_code(ref)
    edits = Edits()
    loop = extract(ref / "main_DataDAM.py", "image_syn = torch.randn", "for it in range(args.Iteration", edits)
    per_class = [torch.nonzero(data.labels == c).flatten().numpy() for c in range(data.classes)]
    images = data.images

    def get_images(c: int, n: int) -> torch.Tensor:  # the reference's get_images on the shared data
        return images[np.random.permutation(per_class[c])[:n]]

    args = SimpleNamespace(ipc=opts.ipc, init="real", zca=False, lr_img=1.0, Iteration=opts.iterations,
                           batch_real=opts.batch_real, dsa=True, dsa_strategy="color_crop_cutout_flip_scale_rotate",
                           dsa_param=utils.ParamDiffAug(), task_balance=0.01, model="ConvNet", device="cpu",
                           dataset="shared", method="DataDAM", save_path="")
    ns = {"torch": torch, "np": np, "nn": torch.nn, "copy": copy, "time": time, "os": os, "print": quiet,
          "args": args, "num_classes": data.classes, "channel": images.shape[1], "im_size": tuple(images.shape[-2:]),
          "get_images": get_images, "eval_it_pool": [], "model_eval_pool": [], "get_network": utils.get_network,
          "DiffAugment": utils.DiffAugment, "get_attention": utils.get_attention, "get_time": utils.get_time}
    np.random.seed(seed)
    torch.manual_seed(seed)
    with torch.random.fork_rng():  # get_network reseeds torch's global generator from the clock
        exec(loop, ns)
    return ns["image_syn"].detach().clone(), ns["label_syn"].clone(), [utils_edits, edits]


def reference_dq(ref: Path, data: SimpleNamespace, seed: int, opts: argparse.Namespace, network: torch.nn.Module
                 ) -> tuple[torch.Tensor, torch.Tensor, list[Edits]]:
    """The reference's DQ selection on `data` with `network`'s weights: quantize_sample's bin loop (dq.py), then
    quantize_bin's sampling (DeepCore Uniform, balance=True, per bin round(fraction · |class in bin|))."""
    from dq import Images, reference_bins, reference_package

    dq = reference_package(ref)
    shared = Images(data.images, data.labels, data.classes)
    bins = reference_bins(ref, dq, network, shared, opts.bins)["bins"]
    fraction = opts.ipc / opts.per_class
    chosen = np.array([], dtype=np.int64)
    for indices in bins:  # quantize_bin.py main(): one Uniform selection per bin, the run's seed every time
        subset = torch.utils.data.Subset(shared, indices)
        picked = dq.methods.Uniform(subset, SimpleNamespace(), fraction, seed, balance=True).select()["indices"]
        chosen = np.append(chosen, indices[picked])
    chosen = torch.from_numpy(chosen)
    return data.images[chosen].clone(), data.labels[chosen].clone(), [Edits()]


def reference_cda(ref: Path, data: SimpleNamespace, seed: int, opts: argparse.Namespace, teacher: torch.nn.Module,
                  mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor, list[Edits]]:
    """CDA's recover (recover_cda_tiny.py get_images, once per ipc_id) with `teacher`: (images [K*ipc,C,H,W] in
    [0, 1], labels [K*ipc], edits)."""
    from common import import_file, optional_module, run_edited

    classes, (channels, size) = data.classes, (data.images.shape[1], data.images.shape[-1])
    draw = "inputs = torch.randn((targets.shape[0], {}), requires_grad=True, device='cuda', dtype=data_type)"
    edits = Edits(constants={"get_images": {200: "NUM_CLASSES", 64: "IMAGE_SIZE"}},
                  statements={draw.format("3, 64, 64"): draw.format("CHANNELS, IMAGE_SIZE, IMAGE_SIZE")})
    utils = import_file(ref / "CDA" / "utils.py", "reference_cda_utils")
    ns = run_edited(ref / "CDA" / "recover_cda_tiny.py", edits,
                    {"NUM_CLASSES": classes, "IMAGE_SIZE": size, "CHANNELS": channels, "print": quiet},
                    {"utils": utils, **optional_module("wandb")})
    ns["tiny_clip"], ns["tiny_denormalize"] = data_range(mean, std)
    edits.note("tiny_clip / tiny_denormalize -> the data's mean/std")
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    ns["save_images"] = lambda _args, images, targets, _ipc_id: saved.append((images.detach().clone(), targets.clone()))
    edits.note("save_images -> kept as float tensors (no 8-bit JPEG)")
    args = SimpleNamespace(batch_size=classes, iteration=opts.iterations, lr=0.25, r_bn=0.01, jitter=4,
                           first_bn_multiplier=10.0, milestone=1.0, easy2hard_mode="cosine", store_best_images=True,
                           verifier=False, syn_data_path="")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    for ipc_id in range(opts.ipc):  # main_syn loads a fresh teacher per ipc_id (get_images hooks every BN anew)
        ns["get_images"](args, copy.deepcopy(teacher), None, ipc_id)
    images, labels = torch.cat([x for x, _ in saved]), torch.cat([y for _, y in saved])
    order = torch.argsort(labels, stable=True)  # class-major
    return images[order], labels[order], [edits]  # its utils.py (BNFeatureHook, lr_cosine_policy) runs unedited


def reference_infer(ref: Path, data: SimpleNamespace, seed: int, opts: argparse.Namespace,
                    teachers: list[torch.nn.Module], mean: tuple[float, ...], std: tuple[float, ...]
                    ) -> tuple[torch.Tensor, torch.Tensor, list[Edits]]:
    """UFC's generation (ufc_cifar.py get_images, once per ipc_id) with `teachers`: (images [K*ipc_end,C,H,W] in
    [0, 1], labels, edits)."""
    import tempfile

    from common import import_file, optional_module, run_edited

    classes, shape = data.classes, tuple(data.images.shape[1:])
    draw = "uni_perb = torch.zeros((1, {}), requires_grad=True, device='cuda', dtype=torch.float)"
    edits = Edits(statements={draw.format("3, 32, 32"): draw.format("*SHAPE"), "loss_packed_features[2].pop(1)": "pass"})
    modules = {name: import_file(ref / "models" / f"{name}.py", name)
               for name in ("mobilenetv2", "efficientnet", "shufflenet")}  # imported at its top, unused here
    modules["utils"] = import_file(ref / "ufc_generation" / "utils.py", "reference_infer_utils")
    ns = run_edited(ref / "ufc_generation" / "ufc_cifar.py", edits, {"SHAPE": shape, "print": quiet},
                    {**modules, **optional_module("wandb")})
    clip, denormalize = data_range(mean, std)
    ns["clip_image"], ns["denormalize_image"] = lambda x, _dataset: clip(x), lambda x, _dataset: denormalize(x)
    edits.note("clip_image / denormalize_image -> the data's mean/std")
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    ns["save_images"] = lambda _args, images, targets, _ipc_id: saved.append((images.detach().clone(), targets.clone()))
    edits.note("save_images -> kept as float tensors (no 8-bit image files)")
    m_teachers = len(teachers)
    ipc_init = int(opts.ipc / (m_teachers / classes + 1))  # the reference's own expression
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(data.labels.numpy() == c))[:ipc_init] for c in range(classes)]
    with tempfile.TemporaryDirectory() as folder:
        for k in range(ipc_init):  # its init tensors: group k = one real image per class, normalized
            torch.save(data.images[[int(rows[k]) for rows in per_class]].clone(), Path(folder) / f"tensor_{k}.pt")
        args = SimpleNamespace(batch_size=classes, num_class=classes, ipc_init=ipc_init, iteration=opts.iterations,
                               lr=0.25, r_bn=1.0, jitter=4, first_bn_multiplier=10.0, store_best_images=True,
                               init_path=folder, dataset="shared", syn_data_path="")
        random.seed(seed)
        torch.manual_seed(seed)
        for ipc_id in range(ipc_init * (m_teachers + 1)):  # generation() loads the teachers anew per ipc_id
            ns["get_images"](args, [copy.deepcopy(t) for t in teachers], None, ipc_id)
    images, labels = torch.cat([x for x, _ in saved]), torch.cat([y for _, y in saved])
    order = torch.argsort(labels, stable=True)
    return images[order], labels[order], [edits]


def data_range(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Callable, Callable]:
    """The references' clip (to the normalized pixel range) and denormalise (to [0, 1]), with the data's
    per-channel mean/std in place of their hard-coded CIFAR / Tiny-ImageNet constants."""
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (lambda x: torch.maximum(torch.minimum(x, (1 - m) / s), -m / s)), (lambda x: (x * s + m).clamp(0, 1))


def recover_teachers(opts: argparse.Namespace, splits) -> list[torch.nn.Module]:  # noqa: ANN001
    """ddbench's cached teacher(s) of this setting (the block method=cda|infer and eval=cda|infer are given)."""
    from ddbench.api import compose_config
    from ddbench.cache import Cache
    from ddbench.methods.teachers import teacher_config
    from ddbench.training import load_teacher

    cfg = compose_config([f"method={opts.method}", f"dataset={opts.dataset}", *teacher_overrides("method", opts)])
    block = teacher_config(cfg["method"]["teacher"], splits.info, ensemble=opts.method == "infer")
    teacher = load_teacher(block, splits, torch.device("cpu"), Cache(cfg["paths"]["cache"]))
    return [member.eval().requires_grad_(False) for member in teacher.members]


def teacher_overrides(prefix: str, opts: argparse.Namespace) -> list[str]:
    """The teacher block of both sides' cda / infer runs (method.teacher and eval.teacher), as the Fashion-MNIST
    presets, for --teacher-epochs epochs: cda ConvNet-BN; infer ConvNet-BN, MobileNetV2 (half width), VGG-11-BN."""
    models, kwargs = (("[convnet_bn]", "{convnet_bn:{width:64}}") if opts.method == "cda" else
                      ("[convnet_bn,mobilenetv2_cifar,vgg11_bn]",
                       "{convnet_bn:{width:64},mobilenetv2_cifar:{width:0.5}}"))
    return [f"{prefix}.teacher.models={models}", f"++{prefix}.teacher.model_kwargs={kwargs}",
            f"{prefix}.teacher.epochs={opts.teacher_epochs}", f"{prefix}.teacher.batch_size=128",
            f"{prefix}.teacher.lr=0.05", f"++{prefix}.teacher.crop_padding=2"]


def ours(method: str, seed: int, opts: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, float]:
    """ddbench's run of the same setting: (images, labels, distill seconds)."""
    overrides = [f"+dataset.max_train_per_class={opts.per_class}", "progress=false", *METHOD_OVERRIDES[method](opts)]
    artifact = ddbench.distill(SIDE_METHOD[method], opts.dataset, opts.ipc, seed=seed, overrides=overrides,
                               device="cpu")
    images, labels = artifact.training_set()  # a factorized set (INFER's real + UFC) materialised
    return images, labels, float(artifact.meta.get("distill_seconds", float("nan")))


SIDE_METHOD = {"datadam": "datadam", "dq": "dq", "cda": "cda", "infer": "infer"}
PROTOCOL = {"datadam": "dc", "dq": "dc", "cda": "cda", "infer": "infer"}
METHOD_OVERRIDES: dict[str, Callable[[argparse.Namespace], list[str]]] = {
    # datadam_code: p = 1, BatchNorm, as the reference's loop; its lr_img 1 and momentum 0.5 are ddbench's too
    "datadam": lambda o: ["experiment=datadam_code", f"method.iterations={o.iterations}",
                          f"method.batch_real={o.batch_real}", "method.checkpoint_every=0"],
    # the selection stage only: the reference's patch stage needs downloaded MAE and ImageNet weights
    "dq": lambda o: ["model=resnet18_cifar", "method.gradient=reference", "method.pixel=false",
                     f"method.num_bins={o.bins}", f"method.embedding.epochs={o.embedding_epochs}"],
    # ddbench's recover defaults (lr 0.25, r_bn 0.01, jitter 4, cosine curriculum) are what the reference is given
    "cda": lambda o: [f"method.iterations={o.iterations}",
                      *teacher_overrides("method", o)],
    "infer": lambda o: [f"method.iterations={o.iterations}", *teacher_overrides("method", o)],
}


def embedding_network(opts: argparse.Namespace, splits) -> torch.nn.Module:  # noqa: ANN001
    """The network ddbench's DQ run used (the same TeacherConfig, so the same cache entry)."""
    from ddbench.training.recipe import TeacherConfig
    from ddbench.training.teacher import load_teacher

    cfg = TeacherConfig(epochs=opts.embedding_epochs, lr=0.01, batch_size=256, seed=0, models=["resnet18_cifar"],
                        model_kwargs={"resnet18_cifar": {}})
    return load_teacher(cfg, splits, torch.device("cpu")).members[0].requires_grad_(False)


def evaluate(images: torch.Tensor, labels: torch.Tensor, seed: int, opts: argparse.Namespace,
             normalized: bool = True) -> float:
    """ddbench's test accuracy of one set under the method's protocol, one seed."""
    protocol = PROTOCOL[opts.method]
    extra = [] if protocol == "dc" else [f"eval.epochs_no_aug={opts.eval_epochs}", "eval.batch_size=64",
                                         *teacher_overrides("eval", opts)]
    report = ddbench.evaluate(images, labels, dataset=opts.dataset, protocol=protocol, models=[opts.model],
                              seeds=[seed], normalized=normalized, device="cpu",
                              overrides=[f"+dataset.max_train_per_class={opts.per_class}",  # the teacher's data
                                         f"eval.epochs={opts.eval_epochs}", "progress=false", *extra])
    return report.accuracies[opts.model][0]


def mean_std(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.pstdev(values):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=sorted(SIDE_METHOD))
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of the method's reference code")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--per-class", type=int, default=100, help="training images per class (the shared subset)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", default="convnet", help="the evaluation model")
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=200, help="datadam, cda, infer: distillation iterations")
    parser.add_argument("--batch-real", type=int, default=64, help="datadam: real images per class per iteration")
    parser.add_argument("--bins", type=int, default=10, help="dq: GraphCut bins")
    parser.add_argument("--embedding-epochs", type=int, default=10, help="dq: epochs of the embedding network")
    parser.add_argument("--teacher-epochs", type=int, default=30, help="cda, infer: epochs of each teacher")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args()
    warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid")  # the reference's DSA
    marker = {"datadam": "main_DataDAM.py", "dq": "quantize_sample.py", "cda": "CDA/recover_cda_tiny.py",
              "infer": "ufc_generation/ufc_cifar.py"}[opts.method]
    if not (opts.reference / marker).is_file():
        parser.error(f"--reference {opts.reference} has no {marker}; pass a checkout of the {opts.method} reference.")
    opts.reference = opts.reference.resolve()
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.set_num_threads(opts.threads)
    splits = load_dataset(opts.dataset, max_train_per_class=opts.per_class)
    data = SimpleNamespace(images=splits.train.images, labels=splits.train.labels, classes=splits.info.num_classes)
    rows: dict[str, dict[str, list[float]]] = {"ddbench": {"acc": [], "sec": []}, "reference": {"acc": [], "sec": []}}
    for seed in range(opts.seeds):
        images, labels, seconds = ours(opts.method, seed, opts)
        rows["ddbench"]["acc"].append(evaluate(images, labels, seed, opts))
        rows["ddbench"]["sec"].append(seconds)
        started = time.perf_counter()
        normalized = True
        if opts.method == "datadam":
            ref_images, ref_labels, edits = reference_datadam(opts.reference, data, seed, opts)
        elif opts.method == "dq":
            ref_images, ref_labels, edits = reference_dq(opts.reference, data, seed, opts,
                                                        embedding_network(opts, splits))
        else:  # the teachers are loaded before the clock starts, as on ddbench's side (its cache)
            teachers = recover_teachers(opts, splits)
            started = time.perf_counter()
            recover = reference_cda if opts.method == "cda" else reference_infer
            ref_images, ref_labels, edits = recover(opts.reference, data, seed, opts,
                                                    teachers[0] if opts.method == "cda" else teachers,
                                                    splits.info.mean, splits.info.std)
            normalized = False  # denormalised to [0, 1] by the reference's save path
        rows["reference"]["sec"].append(time.perf_counter() - started)
        rows["reference"]["acc"].append(evaluate(ref_images, ref_labels, seed, opts, normalized))
        print(f"seed {seed}: ddbench {100 * rows['ddbench']['acc'][-1]:.2f} %, reference "
              f"{100 * rows['reference']['acc'][-1]:.2f} %", file=sys.stderr, flush=True)
    print(f"{opts.method} end to end on {opts.dataset} ({opts.per_class} train images per class), IPC {opts.ipc}, "
          f"evaluated by ddbench ({PROTOCOL[opts.method]}, {opts.model}, {opts.eval_epochs} epochs), {opts.seeds} seeds; reference "
          f"{reference_commit(opts.reference)}; reference edits: "
          f"{'; '.join(e.summary() for e in edits)}")
    print("\n| side | accuracy % | distill s per seed |\n|---|---|---|")
    for side, row in rows.items():
        print(f"| {side} | {mean_std(row['acc'])} | {statistics.mean(row['sec']):.1f} |")
    if opts.json:
        opts.json.write_text(json.dumps({"method": opts.method, "rows": rows,
                                         "settings": {k: str(v) for k, v in vars(opts).items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
