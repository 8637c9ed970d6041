"""
Data and evaluation for train.py and search.py: the synthetic images generated in code (the
default), CIFAR and ImageFolder trees, the held-out split the search scores archs on, the
training and evaluation loaders (a resumed epoch skips what it trained), batch MixUp/CutMix, and
evaluation of a model or a checkpoint (train.py --eval).
"""
import argparse
import copy
import dataclasses
import math
import multiprocessing
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Sampler, Subset

import cli
import runs
import vitas
from cli import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# -----------------------------------------------------------------------------
# Datasets


def synthetic_images(n, num_classes, size, seed):
    """Learnable images generated in code, deterministic from the seed.

    A class is a structure, not a colour: a grating of one of num_classes spatial frequencies
    (1.5 to 8 cycles per image) at a random orientation, in a random window of 3/5 the image side,
    under random phase, contrast, colour tint and strong pixel noise. Networks soon tell distant
    frequencies apart; neighbouring ones take longer and favour finer patches and bigger networks,
    so architectures differ in accuracy and the search has something to find."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    freq = torch.linspace(1.5, 8.0, num_classes)[labels].view(-1, 1, 1) * 2 * math.pi / size
    angle = torch.rand(n, 1, 1, generator=g) * math.pi
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    img = torch.sin((xs * angle.cos() + ys * angle.sin()) * freq + phase)            # (n, S, S)
    w = size * 3 // 5
    x0, y0 = (torch.randint(0, size - w + 1, (n, 1, 1), generator=g) for _ in range(2))
    img = (img * ((xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + w))
           * (0.6 + 0.4 * torch.rand(n, 1, 1, generator=g)))
    tint = 0.4 + 0.6 * torch.rand(n, 3, 1, 1, generator=g)
    img = img.unsqueeze(1) * tint + 0.35 * torch.randn(n, 3, size, size, generator=g)  # (n, 3, S, S)
    return ((img * 0.25 + 0.5).clamp(0, 1) * 255).to(torch.uint8), labels


class TensorImages(Dataset):
    """Generated uint8 images (N, 3, S, S) held in memory, scaled to [0, 1] and normalised as the
    evaluation transform does (the same floats as torchvision's, without importing it: a process
    on the synthetic data starts ~1.5 s sooner); never augmented: they are generated with all the
    variation they need."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.classes = sorted(set(labels.tolist()))
        self.mean, self.std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1)
                               for v in (IMAGENET_MEAN, IMAGENET_STD))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].to(torch.float32).mul_(1.0 / 255)     # (3, S, S)
        return x.sub(self.mean).div_(self.std), int(self.labels[i])


class BadImage(UserError):
    """An image file that cannot be read: one line naming it. A loader worker's error arrives as
    this type with the worker's traceback for a message; its last line is kept."""

    def __init__(self, message):
        super().__init__(message.strip().splitlines()[-1].split(": ", 1)[-1] if message.startswith("Caught ")
                         else message)


class Readable(Dataset):
    """An image folder's dataset whose unreadable files (corrupt, truncated, not an image) stop the
    run with one line naming the file, or with `skip` (--skip-bad-images) are replaced by the next
    readable image, so the dataset's length and held-out split stay; `bad` counts the replacements
    (shared with forked loader workers)."""

    def __init__(self, dataset, skip):
        self.dataset, self.skip, self.bad = dataset, skip, multiprocessing.Value("i", 0)
        self.classes = dataset.classes

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        for j in range(len(self)):
            k = (i + j) % len(self)
            try:
                return self.dataset[k]
            except (OSError, SyntaxError, ValueError) as e:      # PIL's errors for unreadable images
                path = self.dataset.samples[k][0]
                if not self.skip:
                    raise BadImage(f"cannot read image {path} ({type(e).__name__}: {runs.first_line(e)}); replace or "
                                   f"remove it and rerun the same command (it resumes from the last checkpoint), "
                                   f"or pass --skip-bad-images") from None
                with self.bad.get_lock():
                    self.bad.value += 1
        raise BadImage(f"no image of {self.dataset.root} can be read")


def bad_images(datasets, d):
    """Unreadable images replaced so far (--skip-bad-images), summed over ranks (image folders only:
    other data has no files to read, and every rank knows it without a collective)."""
    folders = [ds for ds in (datasets.train.dataset, getattr(datasets.holdout, "dataset", None), datasets.val)
               if isinstance(ds, Readable)]     # (a held-out split with --holdout-extra is generated: no files)
    if not folders:
        return 0
    n = torch.tensor([sum(ds.bad.value for ds in folders)])
    if d.world > 1:
        dist.all_reduce(n)
    return int(n.item())


def eval_transform_spec(size, real):
    """The evaluation transform as data (an exported ViT carries it): resize (the shorter side to an
    int, or to [height, width]), centre crop, then the normalisation's mean and std."""
    return {"resize": int(size / 0.875) if real and size > 64 else [size, size], "crop": size,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def image_transforms(size, train, args):
    """Real data's: DeiT-like for training (random resized crop, flip, RandAugment, random erasing),
    eval_transform_spec's for evaluation (TensorImages holds the synthetic data's)."""
    from torchvision.transforms import v2 as T
    norm = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not train:
        spec = eval_transform_spec(size, real=True)
        return T.Compose([T.Resize(spec["resize"], antialias=True), T.CenterCrop(spec["crop"])] + norm)
    crop = ([T.RandomResizedCrop(size, antialias=True)] if size > 64
            else [T.Resize((size, size), antialias=True), T.RandomCrop(size, padding=size // 8)])
    aug = [T.RandAugment(num_ops=2, magnitude=args.randaug)] if args.randaug > 0 else []
    erase = [T.RandomErasing(p=args.reprob)] if args.reprob > 0 else []
    return T.Compose(crop + [T.RandomHorizontalFlip()] + aug + norm + erase)


def holdout_size(n, holdout):
    """Images held out of n training images: holdout < 1 is a fraction, a whole number >= 1 a count."""
    k = int(round(n * holdout)) if holdout < 1 else int(holdout)
    if k >= n:
        raise UserError(f"--holdout {holdout:g} keeps {k} of the {n} training images out; leave some to train on "
                        f"(a fraction below 1, or a count below {n})")
    return k


def holdout_split(n, holdout, seed):
    """Deterministic (train indices, held-out indices): the held-out part is never trained on and
    is what search.py scores architectures on (val/test never is)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    k = holdout_size(n, holdout)
    return sorted(perm[k:]), sorted(perm[:k])


@dataclasses.dataclass
class Datasets:
    train: Dataset
    holdout: Dataset
    val: Dataset
    classes: list    # class names, in label order

    @property
    def num_classes(self):
        return len(self.classes)


def build_datasets(args, image_size):
    """args.data: 'synthetic', 'cifar10', 'cifar100' or an ImageFolder root with train/ and val/."""
    kind = args.data
    seed = cli.data_seed(args)
    if kind == "synthetic":
        n_train, n_val = args.synthetic_size, max(args.synthetic_size // 5, 100)
        tr = synthetic_images(n_train, args.synthetic_classes, image_size, seed)
        va = synthetic_images(n_val, args.synthetic_classes, image_size, seed + 1)
        train_set = eval_train = TensorImages(*tr)
        val_set = TensorImages(*va)
        classes = [str(i) for i in range(args.synthetic_classes)]
    elif kind in ("cifar10", "cifar100"):
        from torchvision import datasets
        cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
        try:
            tf = lambda train: image_transforms(image_size, train, args)
            train_set = cls(args.data_root, train=True, transform=tf(True), download=args.download)
            eval_train = cls(args.data_root, train=True, transform=tf(False))
            val_set = cls(args.data_root, train=False, transform=tf(False))
        except RuntimeError as e:
            raise UserError(f"{kind} not found under --data-root {args.data_root!r} ({e}); "
                            f"add --download to fetch it there, or point --data-root at a copy") from None
        classes = list(train_set.classes)
    else:
        from torchvision import datasets
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(kind, split)):
                raise UserError(f"--data {kind!r}: expected an ImageFolder tree with {split}/ inside "
                                f"({os.path.join(kind, split)} is missing); or use --data synthetic|cifar10|cifar100")
        try:
            skip = getattr(args, "skip_bad_images", False)
            folder = lambda split, train: Readable(datasets.ImageFolder(
                os.path.join(kind, split), transform=image_transforms(image_size, train, args)), skip)
            train_set, val_set = folder("train", True), folder("val", False)
            eval_train = Readable(copy.copy(train_set.dataset), skip)       # train/ scanned once
            eval_train.dataset.transform = image_transforms(image_size, False, args)
        except (FileNotFoundError, OSError) as e:
            raise UserError(f"--data {kind!r}: {e}") from None
        classes = list(train_set.classes)
    train_idx, hold_idx = holdout_split(len(train_set), args.holdout, seed)
    holdout = Subset(eval_train, hold_idx)
    extra = getattr(args, "holdout_extra", 0)
    if extra and kind != "synthetic":
        raise UserError(f"--holdout-extra generates synthetic images, and the data is {kind!r}; "
                        f"hold more of your own images out with train.py --holdout instead")
    if extra:       # more images of the same distribution, their own seed: what training sees is unchanged
        more = synthetic_images(extra, args.synthetic_classes, image_size, seed + 2)
        holdout = ConcatDataset([holdout, TensorImages(*more)])
    return Datasets(Subset(train_set, train_idx), holdout, val_set, classes)


# -----------------------------------------------------------------------------
# Loaders


class ShardSampler(Sampler):
    """Rank r takes items r, r + world, ... of the first `limit` items: no padding, so sums of
    per-rank counts equal a single-process evaluation exactly."""

    def __init__(self, n, rank, world, limit=None):
        self.indices = list(range(rank, n if limit is None else min(n, limit), world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def eval_loader(dataset, batch_size, d, workers=0, limit=None):
    """Kept for the run: its workers persist (the search scores every candidate through one)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), d.rank, d.world, limit),
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=d.device.type == "cuda")


class EpochOrder(Sampler):
    """The training images in an epoch's order (a DistributedSampler's: each rank its share,
    reshuffled each epoch from --seed), after those a resumed epoch already trained on, as
    (epoch, index) keys for SeededItems. It runs in the main process, so a loader whose workers
    persist across epochs takes each epoch's order from it (epoch_loader sets epoch and skip)."""

    def __init__(self, sampler):
        self.sampler, self.epoch, self.skip = sampler, 0, 0

    def __iter__(self):
        return ((self.epoch, i) for i in list(self.sampler)[self.skip:])

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


class SeededItems(Dataset):
    """Training images by (epoch, index) key. In a loader worker an image's augmentation is drawn
    from a seed of (--seed, epoch, index): the same batches whichever worker takes it and however
    many there are, after a resume too. Without workers, from the process's own stream
    (runs.seed_rank), which the checkpoint keeps."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key
        if torch.utils.data.get_worker_info() is not None:
            torch.manual_seed(int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1, np.uint64)[0]))
        return self.dataset[i]


def train_loader(dataset, args, d):
    """The training loader, built once for the run (its --workers kept across epochs), and the
    steps per epoch."""
    sampler = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    steps = len(sampler) // (args.batch_size * args.accum_steps)
    if steps == 0:
        raise UserError(f"--batch-size {args.batch_size} x {d.world} processes x --accum-steps {args.accum_steps} "
                        f"exceeds the {len(dataset)} training images")
    return DataLoader(SeededItems(dataset, args.seed), batch_size=args.batch_size, sampler=EpochOrder(sampler),
                      num_workers=args.workers, persistent_workers=args.workers > 0,
                      pin_memory=d.device.type == "cuda", drop_last=True,
                      # its own generator: starting an epoch must not draw from the global RNG, or a
                      # resumed epoch would see other augmentations than the uninterrupted one
                      generator=torch.Generator().manual_seed(args.seed * 100003 + d.rank)), steps


def mix_transform(args, num_classes):
    """Batch-level MixUp/CutMix (one of them per batch) from torchvision.transforms.v2; None without
    either (torchvision not imported)."""
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    from torchvision.transforms import v2 as T
    ops = ([T.MixUp(alpha=args.mixup, num_classes=num_classes)] if args.mixup > 0 else []) + \
          ([T.CutMix(alpha=args.cutmix, num_classes=num_classes)] if args.cutmix > 0 else [])
    return T.RandomChoice(ops)


def epoch_loader(loader, epoch, skip):
    """The training loader for `epoch`, after the `skip` batches a resumed epoch already trained on."""
    order = loader.sampler
    order.sampler.set_epoch(epoch)
    order.epoch, order.skip = epoch, skip * loader.batch_size
    return loader


# -----------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model, loader, d, arch=None, side=None, amp=False):
    """Top-1/top-5 (%), mean loss and mean probability of the true class of `model` over a loader
    sharded across ranks (sums are all-reduced): a SuperTransformer at `arch` and `side`, or a plain
    ViT where side is None."""
    was_training = model.training
    model.eval()
    stats = torch.zeros(5, dtype=torch.float64, device=d.device)    # correct@1, correct@5, summed loss, n, summed p
    for x, y in loader:
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with runs.amp_context(d.device, amp):
            logits = model(x) if side is None else model(x, arch, side)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top5 == y[:, None]
        logits = logits.float()
        p_true = logits.softmax(1).gather(1, y[:, None]).sum()
        stats += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), F.cross_entropy(logits, y, reduction="sum"),
                              torch.tensor(len(y), device=d.device), p_true]).double()
    d.all_reduce(stats)
    model.train(was_training)
    c1, c5, loss, n, p = stats.tolist()
    n = max(n, 1)
    return {"top1": 100 * c1 / n, "top5": 100 * c5 / n, "loss": loss / n, "prob": p / n, "n": int(stats[3].item())}


def checkpoint_model(ck, path, arch_path, flag):
    """The model a checkpoint at `path` holds for --eval and --export: a retrain checkpoint's ViT,
    or the super-transformer with the --arch slice (shifted where it scores so); with the arch, the
    sides it was trained on and a name for what is written beside it (eval.json, eval-ARCH.json)."""
    space = vitas.SearchSpace(**ck["space"])
    if ck.get("mode") == "retrain":
        if arch_path:
            raise UserError(f"{path} is a retrain checkpoint and holds its own arch; leave --arch out")
        arch = vitas.Arch.from_dict(ck["arch"])
        model = vitas.ViT(arch, space)
        model.load_state_dict(ck["model"])
        return model, arch, ("model",), ""
    if not arch_path:
        raise UserError(f"{path} is a super-transformer checkpoint: give the sub-network to {flag[2:]} "
                        f"with --arch ARCH.json")
    arch, (model, sides) = runs.load_arch_file(arch_path, space), runs.supernet_of(ck)
    if runs.scores_shifted(ck["args"]):
        arch = vitas.shift_identities(arch)   # the path that scores this network
    return model, arch, sides, "-" + os.path.splitext(os.path.basename(arch_path))[0]


def evaluate_checkpoint(args):
    """--eval CKPT: top-1/top-5/loss on val and on the held-out split, no training, of
    checkpoint_model's network (each side a super-transformer was trained on). Data, split and val
    size come from the checkpoint; eval*.json beside it."""
    d = runs.setup_distributed(args.device, args.timeout)
    ck = runs.load_checkpoint(args.eval, "--eval")
    workers = ck["args"].get("workers", 0) if args.workers is None else args.workers
    ck_args = argparse.Namespace(**{**ck["args"], "download": False, "workers": workers})
    model, arch, sides, stem = checkpoint_model(ck, args.eval, args.arch, "--eval")
    model.to(d.device)
    data = build_datasets(ck_args, ck["space"]["image_size"])
    limit = args.eval_limit or ck_args.eval_limit
    results = {"checkpoint": os.path.abspath(args.eval), "step": ck["step"], "arch": arch.to_dict()}
    for split, dataset, lim in (("val", data.val, limit), ("holdout", data.holdout, None)):
        if not len(dataset):    # a retrain holds out nothing unless asked
            continue
        loader = eval_loader(dataset, args.eval_batch_size, d, workers, limit=lim)
        results[split] = {side: evaluate(model, loader, d, arch, None if side == "model" else side,
                                         getattr(ck_args, "amp", False))
                          for side in sides}
        d.log(f"{split:8s} " + "  ".join(f"{side}: top-1 {r['top1']:.2f}% top-5 {r['top5']:.2f}% loss {r['loss']:.4f} "
                                         f"({r['n']} images)" for side, r in results[split].items()))
    path = os.path.join(os.path.dirname(os.path.abspath(args.eval)), f"eval{stem}.json")
    if d.main:
        runs.write_json(path, results)
        d.log(f"wrote {path}")
    return results


def export_checkpoint(args):
    """--export CKPT: checkpoint_model's network as a plain ViT in a folder to ship, beside CKPT
    (export/, or export-ARCH/ for a slice of a super-transformer on --side): weights.pt, the ViT's
    state dict (loads with weights_only=True), and vit.json with the arch, the space, the class
    names and the evaluation transform. vitas.load(folder) reads it back."""
    ck = runs.load_checkpoint(args.export, "--export")
    model, arch, sides, stem = checkpoint_model(ck, args.export, args.arch, "--export")
    side = args.side or sides[0]
    if args.side and ck.get("mode") == "retrain":
        raise UserError(f"--side picks a slice of a super-transformer; {args.export} holds one ViT: leave --side out")
    if ck.get("mode") != "retrain":
        if side not in sides:
            raise UserError(f"--side {side}: {args.export} was trained on {' and '.join(sides)} only; pick one of them")
        model = vitas.export(model, arch, side)
    ck_args = argparse.Namespace(**{**ck["args"], "download": False})
    space = ck["space"]
    classes = ck.get("classes") or build_datasets(ck_args, space["image_size"]).classes   # older checkpoints
    folder = os.path.join(os.path.dirname(os.path.abspath(args.export)), f"export{stem}")
    os.makedirs(folder, exist_ok=True)
    runs.save_atomic(os.path.join(folder, "weights.pt"), model.state_dict())
    runs.write_json(os.path.join(folder, "vit.json"), {
        "arch": arch.to_dict(), "space": space, "classes": classes,
        "transform": eval_transform_spec(space["image_size"], ck_args.data != "synthetic"),
        "checkpoint": os.path.abspath(args.export), "step": ck["step"], "side": None if side == "model" else side,
        "provenance": runs.provenance()})
    print(f"wrote {folder}: {arch}, {vitas.params(arch, vitas.SearchSpace(**space)) / 1e6:.3f} M params, "
          f"{len(classes)} classes; load it with vitas.load({folder!r})")
    return folder
