"""
Train the ViTAS super-transformer (default mode) or retrain one found architecture (--arch).

One process, or any number under torchrun (gloo on CPU, nccl on CUDA, picked from the device):

    python train.py --epochs 3 --flops-min 2M --flops-max 4M             # synthetic data, tiny space
    torchrun --standalone --nproc_per_node=2 train.py --out runs/super --flops-min 2M --flops-max 4M
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        train.py --space vitas-1g --data /data/imagenet --flops-min 0.9G --flops-max 1.1G --amp --device cuda
    python train.py --arch runs/search/best_arch.json --out runs/retrain  # retrain a found arch from scratch

Super-transformer mode (arXiv 2106.13700, section 3): each step trains sub-networks drawn uniformly
for --uniform-epochs, then with the learned identity probability that concentrates them in the
FLOPs window. Every rank draws the same archs from a generator seeded by (seed, step), so no
communication is needed. --recipe v1 is the paper's first version: one arch a step, trained on its
left and on its right slices (bilateral sharing), each side with its own loss, gradients summed.
The default recipe, v2, adds what made the super-transformer rank archs better in our measurements
(README "Results"): the paper's second version's identity shifting and weak augmentation. Cyclic
sharing, the sandwich rule and in-place distillation (beyond v1) are opt-in flags.

    python train.py --eval runs/retrain/checkpoint.pt                      # evaluate, no training

Re-running the same command resumes from --out/checkpoint.pt.
"""
import argparse
import dataclasses
import json
import math
import numbers
import os
import random
import sys
import time
from contextlib import nullcontext
from decimal import Decimal, InvalidOperation

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

import plots
import vitas

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class UserError(Exception):
    """Bad input from the user: printed as one clear line, no traceback."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("error: argument --lr: ..."), exit code 2, nothing written."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr, flush=True)
        sys.exit(2)


def parse_count(text):
    """A FLOPs or parameter count as an int: '1.0G', '900M', '350k', '1.2e9', '1200000' or a number.
    Decimal arithmetic, so '0.1G' is exactly 100000000; a fractional result is rounded."""
    bad = ValueError(f"cannot read {text!r} as a count; expected a non-negative number, optionally ending in "
                     f"k, M or G (e.g. 1.0G, 900M, 350k, 1.2e9, 1200000)")
    if isinstance(text, bool) or not isinstance(text, (str, numbers.Real)):
        raise bad
    s = str(text).strip()
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(s[-1:].lower())   # decimal; a count has no milli
    try:
        value = Decimal(s[:-1] if scale else s) * (scale or 1)
    except InvalidOperation:
        raise bad from None
    if not value.is_finite() or value < 0:
        raise bad
    return int(value.to_integral_value())


def number_arg(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """argparse type: a finite int or float inside a range; the message names the value and the range
    (argparse adds the flag's name)."""
    rng = f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{')' if hi_open or hi is None else ']'}"
    what = "a whole number" if kind is int else "a number"

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; expected {what} in {rng}") from None
        if not (math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi))):
            raise argparse.ArgumentTypeError(f"{text} is out of range; expected {what} in {rng}")
        return v
    parse.__name__ = kind.__name__   # argparse names the type in some messages
    return parse


def holdout_arg(text):
    """--holdout: a fraction in [0, 1) or a whole count >= 1."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (0 <= v < 1 or (v >= 1 and v == int(v))):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction in [0, 1) (e.g. 0.1) or a whole number of images (e.g. 2000)")
    return v if v < 1 else int(v)


def count_arg(text):
    """parse_count for argparse, which shows only an ArgumentTypeError's own message."""
    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -----------------------------------------------------------------------------
# Distributed set-up (env-based: torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0

    def all_reduce(self, t):
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def log(self, *a):
        """Print on rank 0 only."""
        if self.main:
            print(*a, flush=True)


def setup_distributed(device="auto"):
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        # torchrun sets OMP_NUM_THREADS=1; a plain run may use every core
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


def cleanup_distributed(barrier=False):
    """Tear the process group down; after a clean run every rank waits for the others first, so
    none exits while a peer still talks to it (gloo aborts a process whose peer vanished)."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# Data


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
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    img = torch.sin((xs * angle.cos() + ys * angle.sin()) * freq + phase)            # (n, S, S)
    w = size * 3 // 5
    x0, y0 = (torch.randint(0, size - w + 1, (n, 1, 1), generator=g) for _ in range(2))
    img = img * ((xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + w)) * (0.6 + 0.4 * torch.rand(n, 1, 1, generator=g))
    tint = 0.4 + 0.6 * torch.rand(n, 3, 1, 1, generator=g)
    img = img.unsqueeze(1) * tint + 0.35 * torch.randn(n, 3, size, size, generator=g)  # (n, 3, S, S)
    return ((img * 0.25 + 0.5).clamp(0, 1) * 255).to(torch.uint8), labels


class TensorImages(Dataset):
    """uint8 images (N, 3, S, S) held in memory, with a transform."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform
        self.classes = sorted(set(labels.tolist()))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def image_transforms(size, train, args, real):
    """DeiT-like for real data (random resized crop, flip, RandAugment, random erasing); synthetic
    data gets none (it is generated with all the variation it needs)."""
    from torchvision.transforms import v2 as T
    norm = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not train or not real:
        resize = [T.Resize(int(size / 0.875), antialias=True), T.CenterCrop(size)] if real and size > 64 else [T.Resize((size, size), antialias=True)]
        return T.Compose(resize + norm)
    crop = [T.RandomResizedCrop(size, antialias=True)] if size > 64 else [T.Resize((size, size), antialias=True), T.RandomCrop(size, padding=size // 8)]
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
    num_classes: int


def build_datasets(args, image_size):
    """args.data: 'synthetic', 'cifar10', 'cifar100' or an ImageFolder root with train/ and val/."""
    from torchvision import datasets
    kind = args.data
    if kind == "synthetic":
        n_train, n_val = args.synthetic_size, max(args.synthetic_size // 5, 100)
        tr = synthetic_images(n_train, args.synthetic_classes, image_size, args.seed)
        va = synthetic_images(n_val, args.synthetic_classes, image_size, args.seed + 1)
        make = lambda data, train: TensorImages(*data, image_transforms(image_size, train, args, real=False))
        train_set, eval_train, val_set = make(tr, True), make(tr, False), make(va, False)
        num_classes = args.synthetic_classes
    elif kind in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
        try:
            tf = lambda train: image_transforms(image_size, train, args, real=True)
            train_set = cls(args.data_root, train=True, transform=tf(True), download=args.download)
            eval_train = cls(args.data_root, train=True, transform=tf(False))
            val_set = cls(args.data_root, train=False, transform=tf(False))
        except RuntimeError as e:
            raise UserError(f"{kind} not found under --data-root {args.data_root!r} ({e}); "
                            f"add --download to fetch it there, or point --data-root at a copy") from None
        num_classes = len(train_set.classes)
    else:
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(kind, split)):
                raise UserError(f"--data {kind!r}: expected an ImageFolder tree with {split}/ inside "
                                f"({os.path.join(kind, split)} is missing); or use --data synthetic|cifar10|cifar100")
        try:
            tf = lambda train: image_transforms(image_size, train, args, real=True)
            train_set = datasets.ImageFolder(os.path.join(kind, "train"), transform=tf(True))
            eval_train = datasets.ImageFolder(os.path.join(kind, "train"), transform=tf(False))
            val_set = datasets.ImageFolder(os.path.join(kind, "val"), transform=tf(False))
        except (FileNotFoundError, OSError) as e:
            raise UserError(f"--data {kind!r}: {e}") from None
        num_classes = len(train_set.classes)
    train_idx, hold_idx = holdout_split(len(train_set), args.holdout, args.seed)
    return Datasets(Subset(train_set, train_idx), Subset(eval_train, hold_idx), val_set, num_classes)


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
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), d.rank, d.world, limit),
                      num_workers=workers, pin_memory=d.device.type == "cuda")


class ResumeSampler(Sampler):
    """The epoch's DistributedSampler order, starting after the batches already trained on."""

    def __init__(self, sampler, skip):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


# -----------------------------------------------------------------------------
# Architecture sampling for super-transformer training


def reported_archs(space, window=None, cost=None):
    """The largest, smallest and a middle arch: evaluated every epoch, and the sandwich's two ends.

    Without a FLOPs window: the space's largest and smallest (every block present) and the middle
    choice of every dimension. With one, so that they are networks the learned phase trains: of the
    uniform archs (SearchSpace.uniform_archs) inside the window, those with the most and the fewest
    FLOPs and the one nearest the window's centre (ties: more parameters for the largest, fewer
    otherwise). `cost` (default FLOPs) may be another measure the window is in, e.g. seconds per image."""
    if window is None:
        mid = lambda xs: xs[len(xs) // 2]
        h = mid(space.heads)
        a = mid(space._attn_for[h])
        middle = vitas.Arch(mid(space.patch_sizes), mid(space.embed_dims), (vitas.Block(h, a, mid(space.mlp_dims)),) * space.depth)
        return {"largest": space.max_arch(), "smallest": space.min_arch(), "middle": middle}
    lo, hi = window
    cost = cost or (lambda a: vitas.flops(a, space))
    inside = [(cost(a), vitas.params(a, space), a) for a in space.uniform_archs()]
    inside = [r for r in inside if lo <= r[0] <= hi]
    if not inside:
        raise UserError(f"no uniform arch (every present block alike) lies in the window [{lo:,}, {hi:,}]; widen it")
    centre = (lo + hi) / 2
    return {"largest": max(inside, key=lambda r: r[:2])[2], "smallest": min(inside, key=lambda r: r[:2])[2],
            "middle": min(inside, key=lambda r: (abs(r[0] - centre), r[1]))[2]}


class ArchSampler:
    """The sub-networks of each training step.

    Uniform phase for the first `uniform_epochs`, then the learned identity probability that puts
    sampled networks in the FLOPs window (out-of-window draws are redrawn, bounded). With
    `sandwich` N (beyond v1) a step trains the largest and the smallest network (reported_archs)
    and N drawn ones; with `identity_shift` (v2) every draw has its identities moved to the end.
    The archs of global step s come from a generator seeded by (seed, s): every rank draws the same
    ones with no communication, and a resumed run draws what the uninterrupted run would have."""

    def __init__(self, space, seed, uniform_epochs, flops_min=None, flops_max=None, identity_prob=None, max_tries=100,
                 sandwich=None, identity_shift=False, cost=None):
        self.space, self.seed, self.uniform_epochs, self.max_tries = space, seed, uniform_epochs, max_tries
        self.sandwich, self.identity_shift = sandwich, identity_shift
        self.calibration_record = None   # a throughput window's calibration (train.calibrate_throughput)
        # the window is in FLOPs, or in the units of `cost` (a LatencyModel: seconds per image)
        self.cost = cost or (lambda a: vitas.flops(a, space))
        self.window = None if flops_min is None and flops_max is None else (flops_min or 0, flops_max or self.cost(space.max_arch()))
        self.identity_prob = identity_prob
        if self.window is not None and identity_prob is None:
            self.identity_prob = vitas.solve_identity_prob(space, *self.window, np.random.default_rng([seed, 1]), cost=cost,
                                                           what="FLOPs" if cost is None else "seconds-per-image")
        self.reports = reported_archs(space, self.window, cost)
        self.ends = [self.reports["largest"], self.reports["smallest"]]

    def calibration(self, n=1000):
        """Fraction of networks inside the window: raw draws at the learned p, and as trained."""
        rng = np.random.default_rng([self.seed, 2])
        raw = np.mean([self.inside(self.space.sample(rng, self.identity_prob)) for _ in range(n)])
        drawn = [self.draw(rng, learned=True) for _ in range(n)]
        return raw, np.mean([self.inside(a) for a in drawn]), np.mean([vitas.flops(a, self.space) for a in drawn])

    def inside(self, arch):
        return self.window[0] <= self.cost(arch) <= self.window[1]

    def learned(self, epoch):
        return epoch >= self.uniform_epochs and self.window is not None

    def prob(self, epoch):
        """Identity probability in force at `epoch` (1/2 in the uniform phase)."""
        return self.identity_prob if self.learned(epoch) else 0.5

    def draw(self, rng, learned):
        if not learned:
            arch = self.space.sample(rng)
        else:
            for _ in range(self.max_tries):   # bounded resampling; the last draw stands if none fits
                arch = self.space.sample(rng, self.identity_prob)
                if self.inside(arch):
                    break
        return vitas.shift_identities(arch) if self.identity_shift else arch

    def __call__(self, step, epoch):
        """The archs step `step` trains: [drawn], or [largest, smallest, N drawn] with the sandwich."""
        rng = np.random.default_rng([self.seed, 0, step])
        if self.sandwich is None:
            return [self.draw(rng, self.learned(epoch))]
        return self.ends + [self.draw(rng, self.learned(epoch)) for _ in range(self.sandwich)]


# -----------------------------------------------------------------------------
# Evaluation (reused by search.py)


def amp_context(device, enabled):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


@torch.no_grad()
def evaluate(model, loader, d, arch=None, side="left", amp=False):
    """Top-1/top-5 (%) of `model` (a SuperTransformer at `arch`/`side`, or a plain ViT with
    arch=None) over a loader sharded across ranks; counts are all-reduced."""
    was_training = model.training
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64, device=d.device)    # correct@1, correct@5, summed loss, n
    for x, y in loader:
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with amp_context(d.device, amp):
            logits = model(x) if arch is None else model(x, arch, side)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top5 == y[:, None]
        stats += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), F.cross_entropy(logits.float(), y, reduction="sum"),
                              torch.tensor(len(y), device=d.device)]).double()
    d.all_reduce(stats)
    model.train(was_training)
    c1, c5, loss, n = stats.tolist()
    n = max(n, 1)
    return {"top1": 100 * c1 / n, "top5": 100 * c5 / n, "loss": loss / n, "n": int(stats[3].item())}


# -----------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path, state):
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:   # truncated or foreign files fail in many ways inside torch
        raise UserError(f"checkpoint {path!r} is corrupt or not a vitas checkpoint ({type(e).__name__}: {e}); "
                        f"delete it to start afresh or point at another file") from None
    if not isinstance(ck, dict) or not {"model", "space", "args"} <= ck.keys():
        raise UserError(f"checkpoint {path!r} is not a vitas checkpoint (needs model, space and args entries)")
    return ck


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s):
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def load_arch_file(path, space):
    """Arch JSON (as search.py writes it) -> validated Arch, with clear errors."""
    try:
        with open(path) as f:
            arch = vitas.Arch.from_dict(json.load(f))
        return space.validate(arch)
    except FileNotFoundError:
        raise UserError(f"--arch {path!r}: file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--arch {path!r} is not valid JSON: {e}") from None
    except ValueError as e:
        raise UserError(f"--arch {path!r}: {e}") from None


# -----------------------------------------------------------------------------
# Optimisation


def param_groups(model, weight_decay):
    """No weight decay on norms, biases, class tokens and position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "pos_embed")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup_steps, total_steps, min_ratio):
    def f(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def mix_transform(args, num_classes):
    """Batch-level MixUp/CutMix (one of them per batch) from torchvision.transforms.v2."""
    from torchvision.transforms import v2 as T
    ops = ([T.MixUp(alpha=args.mixup, num_classes=num_classes)] if args.mixup > 0 else []) + \
          ([T.CutMix(alpha=args.cutmix, num_classes=num_classes)] if args.cutmix > 0 else [])
    return T.RandomChoice(ops) if ops else None


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# -----------------------------------------------------------------------------
# Training


def build_model(args, space, arch, d):
    """The SuperTransformer, or for a retrain the plain ViT of `arch`, from scratch or (--init-from)
    with the weights it inherits from a super-transformer checkpoint."""
    if arch is None:
        return vitas.SuperTransformer(space, drop_path=args.drop_path)
    if args.init_from:
        init = load_checkpoint(args.init_from)
        supernet = vitas.SuperTransformer(space)
        supernet.load_state_dict(init["model"])
        side = vitas.SHARINGS[init["args"].get("sharing", "bilateral")][0]
        d.log(f"retrain {arch} from the weights inherited from {args.init_from} ({side} slice)")
        return vitas.export(supernet, arch, side, drop_path=args.drop_path)
    d.log(f"retrain {arch} from scratch")
    return vitas.ViT(arch, space, drop_path=args.drop_path)


def calibrate_throughput(args, space, d, log):
    """A LatencyModel of this device fitted to the images/s of sampled archs measured for about
    --calibration-seconds (rank 0 measures, every rank gets the same fit). Returns the calibration
    record a checkpoint keeps, so a resumed run does not measure again."""
    batch = args.throughput_batch or (128 if d.device.type == "cuda" else 16)
    record = [None]
    if d.main:
        meter = vitas.ThroughputMeter(space, d.device, batch, args.throughput_amp, max_seconds=1.0)
        rng = np.random.default_rng([args.seed, 4])
        archs, start = [space.max_arch(), vitas.Arch(space.patch_sizes[-1], space.embed_dims[0], (None,) * space.depth)], time.time()
        speeds = [meter(a) for a in archs]
        while len(archs) < 12 or (len(archs) < 64 and time.time() - start < args.calibration_seconds):
            archs.append(space.sample(rng, identity_prob=rng.uniform(0, 0.9)))   # every depth, not only p = 1/2
            speeds.append(meter(archs[-1]))
        model = vitas.LatencyModel(space).fit(archs, speeds)
        record = [{"coef": model.coef.tolist(), "device": str(d.device), "batch": batch, "amp": args.throughput_amp,
                   "measured": len(archs), "seconds": time.time() - start,
                   "fastest": [max(speeds), str(archs[int(np.argmax(speeds))])],
                   "slowest": [min(speeds), str(archs[int(np.argmin(speeds))])]}]
    if d.world > 1:
        dist.broadcast_object_list(record, src=0)
    record = record[0]
    log(f"throughput calibration on {record['device']} (batch {record['batch']}): {record['measured']} archs measured in "
        f"{record['seconds']:.0f} s, {record['slowest'][0]:,.0f} to {record['fastest'][0]:,.0f} images/s")
    return record


def make_sampler(args, space, d, calibration=None):
    """The super-transformer's ArchSampler, its FLOPs (or throughput) window calibrated and
    checked; `calibration`: a resumed run's throughput calibration, reused as it is."""
    log, cost, window = d.log, None, (args.flops_min, args.flops_max)
    if args.throughput_min is not None or args.throughput_max is not None:
        calibration = calibration or calibrate_throughput(args, space, d, log)
        fast, slow = calibration["fastest"], calibration["slowest"]
        tmin, tmax = args.throughput_min or slow[0] / 2, args.throughput_max or fast[0] * 2
        if tmin > fast[0] or tmax < slow[0]:
            raise UserError(f"throughput window [{tmin:g}, {tmax:g}] images/s is out of reach on {calibration['device']}: the "
                            f"fastest measured arch does {fast[0]:,.0f} ({fast[1]}), the slowest {slow[0]:,.0f} ({slow[1]})")
        cost, window = vitas.LatencyModel(space, calibration["coef"]), (1.0 / tmax, 1.0 / tmin)   # seconds per image
    sampler = ArchSampler(space, args.seed, args.uniform_epochs, *window, sandwich=args.sandwich,
                          identity_shift=args.identity_shift, cost=cost)
    sampler.calibration_record = calibration
    if sampler.window is not None:
        raw, inside, mean = sampler.calibration()
        what = "FLOPs window" if cost is None else "throughput window (predicted)"
        log(f"learned identity probability {sampler.identity_prob:.3f} for the {what}: {100 * raw:.0f}% of raw draws "
            f"inside, {100 * inside:.0f}% after resampling, mean {mean / 1e6:.2f} MFLOPs")
        if inside < 0.5:
            raise UserError(f"only {100 * inside:.0f}% of sampled networks reach the {what}; widen it")
        if cost is not None and "inside" not in calibration:
            calibration["inside"] = check_throughput_window(sampler, calibration, (1 / window[1], 1 / window[0]), d)
            log(f"check: {100 * calibration['inside']:.0f}% of 16 freshly drawn archs measure inside the throughput window")
    log("reported each epoch" + (" (and the sandwich's ends)" if args.sandwich is not None else "") + ": " +
        ", ".join(f"{k} {a} ({vitas.flops(a, space) / 1e6:.2f} MFLOPs)" for k, a in sampler.reports.items()))
    return sampler


def check_throughput_window(sampler, calibration, window, d):
    """Fraction of 16 archs drawn as training draws them (learned phase) whose measured images/s
    lie in `window`: how well the fitted latency model steers sampling on this device."""
    inside = [None]
    if d.main:
        meter = vitas.ThroughputMeter(sampler.space, calibration["device"], calibration["batch"], calibration["amp"], max_seconds=1.0)
        rng = np.random.default_rng([sampler.seed, 5])
        inside = [float(np.mean([window[0] <= meter(sampler.draw(rng, learned=True)) <= window[1] for _ in range(16)]))]
    if d.world > 1:
        dist.broadcast_object_list(inside, src=0)
    return inside[0]


def stored_calibration(args):
    """The throughput calibration of a run being resumed from --out, if it has one."""
    path = os.path.join(args.out, "checkpoint.pt")
    return load_checkpoint(path).get("throughput_calibration") if os.path.exists(path) else None


def distill_loss(logits, teacher_logits):
    """Cross-entropy against the teacher's soft predictions; the teacher gets no gradient."""
    return -(F.softmax(teacher_logits.detach().float(), dim=-1) * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def train_step(ddp, x, y, archs, sides, args, d):
    """Forward and backward every (side, arch) pass of one step into the summed gradients; DDP
    all-reduces on the last backward only. The first arch (the largest with the sandwich) learns
    from the labels; with --distill the others learn from its soft predictions on the same side.
    Returns the passes' summed loss, all-reduced (every rank takes the same decisions)."""
    passes = [(side, i, a) for side in sides for i, a in enumerate(archs)]
    loss_sum, teacher = torch.zeros((), device=d.device), None
    for n, (side, i, a) in enumerate(passes):
        sync = ddp.no_sync() if d.world > 1 and n < len(passes) - 1 else nullcontext()
        with sync:
            with amp_context(d.device, args.amp):
                out = ddp(x) if side is None else ddp(x, a, side)
                if i > 0 and args.distill:
                    loss = distill_loss(out, teacher)
                else:
                    loss = F.cross_entropy(out.float(), y, label_smoothing=args.smoothing)
                    teacher = out.detach()
            loss.backward()
        loss_sum += loss.detach()
    return d.all_reduce(loss_sum) / d.world, len(passes)


def optimizer_step(run, ddp, x, y, archs, sides):
    """One optimizer step on this step's archs (train_step's passes); the passes' mean loss."""
    run.optimizer.zero_grad(set_to_none=True)
    loss_all, passes = train_step(ddp, x, y, archs, sides, run.args, run.d)
    if not torch.isfinite(loss_all):
        raise UserError(f"non-finite loss at step {run.step} (archs {', '.join(map(str, archs))}); the last good "
                        f"checkpoint in {run.path} is intact — lower --lr or enable --clip-grad")
    if run.args.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.args.clip_grad)
    run.optimizer.step()
    run.schedule.step()
    run.step += 1
    return loss_all.item() / passes


def epoch_loader(args, data, train_sampler, epoch, skip, d):
    """The epoch's training batches, after the `skip` ones a resumed epoch already trained on."""
    train_sampler.set_epoch(epoch)
    return DataLoader(data.train, batch_size=args.batch_size, sampler=ResumeSampler(train_sampler, skip * args.batch_size),
                      num_workers=args.workers, pin_memory=d.device.type == "cuda", drop_last=True,
                      # its own generator: creating the iterator must not draw from the global RNG,
                      # or a resumed epoch would see other augmentations than the uninterrupted one
                      generator=torch.Generator().manual_seed(args.seed * 100003 + epoch * 1009 + d.rank))


@dataclasses.dataclass
class Run:
    """A training run's state: what its checkpoint holds, and its position."""
    args: argparse.Namespace
    d: Dist
    space: vitas.SearchSpace
    arch: object                 # the retrain arch, None for the super-transformer
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: object
    sampler: object              # ArchSampler, None for a retrain
    steps_per_epoch: int
    step: int = 0
    sums: dict = None            # this epoch's running sums
    record: dict = None          # the last epoch's log record

    @property
    def path(self):
        return os.path.join(self.args.out, "checkpoint.pt")

    def save(self):
        states = [None] * self.d.world
        if self.d.world > 1:   # every rank's RNG (augmentation, drop path) so a resume is exact
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if self.d.main:
            save_checkpoint(self.path, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "step": self.step, "epoch": self.step // self.steps_per_epoch, "epoch_sums": self.sums, "record": self.record,
                "rng": states, "args": vars(self.args), "space": self.space.to_dict(), "world": self.d.world,
                "identity_prob": None if self.sampler is None else self.sampler.identity_prob,
                "throughput_calibration": None if self.sampler is None else self.sampler.calibration_record,
                "arch": None if self.arch is None else self.arch.to_dict(), "mode": "super" if self.arch is None else "retrain"})

    def resume(self):
        """Continue from the checkpoint in --out, if there is one, refusing one of another run."""
        if not os.path.exists(self.path):
            return
        ck = load_checkpoint(self.path)
        if ck.get("arch") != (None if self.arch is None else self.arch.to_dict()):
            raise UserError(f"{self.path} belongs to another run (arch differs); use another --out or delete it")
        changed = [k for k in RECIPE_KEYS if ck["args"].get(k, RECIPES["v1"].get(k)) != getattr(self.args, k)]
        if self.arch is None and changed:
            raise UserError(f"{self.path} was trained with other {', '.join('--' + k.replace('_', '-') for k in changed)}; "
                            f"resume with the same recipe, or use another --out")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.schedule.load_state_dict(ck["schedule"])
        self.step, self.sums, self.record = ck["step"], ck["epoch_sums"], ck["record"]
        if self.sampler is not None:
            self.sampler.identity_prob = ck["identity_prob"]
        set_rng_state(ck["rng"][min(self.d.rank, len(ck["rng"]) - 1)])
        self.d.log(f"resumed from {self.path} at step {self.step} (epoch {self.step // self.steps_per_epoch})")


def end_of_epoch(run, val_loader, epoch, seen, seconds):
    """Evaluate (the retrained model, or the reported archs), and the epoch's log record."""
    args, d, space = run.args, run.d, run.space
    if run.arch is not None:
        evals = {"model": evaluate(run.model, val_loader, d, amp=args.amp)}
    else:
        side = vitas.SHARINGS[args.sharing][0]
        evals = {k: evaluate(run.model, val_loader, d, a, side, args.amp) for k, a in run.sampler.reports.items()}
    n = max(run.sums["n"], 1)
    record = {"epoch": epoch + 1, "step": run.step, "loss": run.sums["loss"] / n, "lr": run.schedule.get_last_lr()[0],
              "identity_prob": None if run.sampler is None else run.sampler.prob(epoch),
              "mean_flops": run.sums["flops"] / n, "images_per_s": seen / max(seconds, 1e-9),
              "val": {k: {"top1": v["top1"], "top5": v["top5"], "loss": v["loss"], "n": v["n"]} for k, v in evals.items()}}
    if run.sampler is not None:
        record["reported"] = {k: {"arch": a.to_dict(), "flops": vitas.flops(a, space)} for k, a in run.sampler.reports.items()}
    d.log("  val " + "  ".join(f"{k} top-1 {v['top1']:.1f}% top-5 {v['top5']:.1f}%" for k, v in evals.items()))
    return record


def run_space(args, log):
    """The --space preset, or for --init-from the space of the checkpoint whose weights are inherited
    (an explicit --space that differs from it is refused)."""
    if not args.init_from:
        args.space = args.space or "tiny"
        return vitas.SearchSpace.preset(args.space)
    if not args.arch:
        raise UserError("--init-from inherits weights for a retrain: give the arch to retrain with --arch")
    init = load_checkpoint(args.init_from)
    name = init["args"].get("space")
    if args.space is not None and args.space != name:
        raise UserError(f"--space {args.space} differs from the space of --init-from {args.init_from} ({name}); leave "
                        f"--space out: the checkpoint's space is used")
    args.space = name
    log(f"search space {name} of {args.init_from}")
    return vitas.SearchSpace(**init["space"])


def evaluate_checkpoint(args):
    """--eval CKPT: top-1/top-5/loss on val and on the held-out split, no training: a retrain
    checkpoint's ViT, or the --arch slice of a super-transformer checkpoint (each side it was
    trained on). Data, split and val size come from the checkpoint; eval*.json beside it."""
    d = setup_distributed(args.device)
    ck = load_checkpoint(args.eval)
    space = vitas.SearchSpace(**ck["space"])
    ck_args = argparse.Namespace(**{**ck["args"], "download": False, "workers": args.workers})
    if ck.get("mode") == "retrain":
        if args.arch:
            raise UserError(f"{args.eval} is a retrain checkpoint and holds its own arch; leave --arch out")
        arch = vitas.Arch.from_dict(ck["arch"])
        model, sides, name = vitas.ViT(arch, space), ("model",), "eval.json"
    else:
        if not args.arch:
            raise UserError(f"{args.eval} is a super-transformer checkpoint: give the sub-network to evaluate with --arch ARCH.json")
        arch, model = load_arch_file(args.arch, space), vitas.SuperTransformer(space)
        if getattr(ck_args, "identity_shift", False):
            arch = vitas.shift_identities(arch)   # the path it trained for this network
        sides = vitas.SHARINGS[getattr(ck_args, "sharing", "bilateral")]
        name = f"eval-{os.path.splitext(os.path.basename(args.arch))[0]}.json"
    model.load_state_dict(ck["model"])
    model.to(d.device)
    data = build_datasets(ck_args, space.image_size)
    limit = args.eval_limit or ck_args.eval_limit
    results = {"checkpoint": os.path.abspath(args.eval), "step": ck["step"], "arch": arch.to_dict()}
    for split, dataset, lim in (("val", data.val, limit), ("holdout", data.holdout, None)):
        loader = eval_loader(dataset, args.eval_batch_size, d, args.workers, limit=lim)
        results[split] = {side: evaluate(model, loader, d, None if side == "model" else arch, side, getattr(ck_args, "amp", False))
                          for side in sides}
        d.log(f"{split:8s} " + "  ".join(f"{side}: top-1 {r['top1']:.2f}% top-5 {r['top5']:.2f}% loss {r['loss']:.4f} "
                                         f"({r['n']} images)" for side, r in results[split].items()))
    path = os.path.join(os.path.dirname(os.path.abspath(args.eval)), name)
    if d.main:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, path)
        d.log(f"wrote {path}")
    return results


def build_run(args, d):
    """Space, data, model (DDP-wrapped where distributed), arch sampler, optimiser and schedule."""
    log = d.log
    space = run_space(args, log)
    data = build_datasets(args, space.image_size)
    if space.num_classes != data.num_classes:   # the data's class count wins
        log(f"data has {data.num_classes} classes, the search space {space.num_classes}: using {data.num_classes}")
        space = dataclasses.replace(space, num_classes=data.num_classes)
    arch = load_arch_file(args.arch, space) if args.arch is not None else None
    model = build_model(args, space, arch, d).to(d.device)
    if arch is not None:
        log(f"  {vitas.flops(arch, space) / 1e6:.2f} MFLOPs, {vitas.params(arch, space) / 1e6:.3f} M params")
    ddp = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
              find_unused_parameters=arch is None) if d.world > 1 else model   # a step uses slices
    sampler = make_sampler(args, space, d, stored_calibration(args)) if arch is None else None

    train_sampler = DistributedSampler(data.train, num_replicas=d.world, rank=d.rank, shuffle=True, seed=args.seed, drop_last=True)
    steps_per_epoch = len(train_sampler) // args.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size {args.batch_size} x {d.world} processes exceeds the {len(data.train)} training images")
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.warmup_epochs * steps_per_epoch, args.epochs * steps_per_epoch, args.min_lr / args.lr))
    return Run(args, d, space, arch, model, optimizer, schedule, sampler, steps_per_epoch), ddp, data, train_sampler


def train(args):
    if args.eval:
        return evaluate_checkpoint(args)
    resolve_recipe(args)
    d = setup_distributed(args.device)
    log = d.log
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    if args.amp and d.device.type == "cpu":
        log("note: bf16 autocast on this CPU may be slower than fp32")

    run, ddp, data, train_sampler = build_run(args, d)
    space, arch, model, sampler, schedule = run.space, run.arch, run.model, run.sampler, run.schedule
    steps_per_epoch = run.steps_per_epoch
    total_steps = args.epochs * steps_per_epoch
    os.makedirs(args.out, exist_ok=True)
    run.resume()
    mix = mix_transform(args, space.num_classes)
    sides = (None,) if arch is not None else vitas.SHARINGS[args.sharing]
    val_loader = eval_loader(data.val, args.eval_batch_size, d, args.workers, limit=args.eval_limit)

    log(f"{'retrain' if arch is not None else 'super-transformer'} | {d.world} process(es) on {d.device} | batch {args.batch_size} "
        f"per process, effective {args.batch_size * d.world} | {steps_per_epoch} steps/epoch x {args.epochs} epochs | "
        f"train {len(data.train)}, held-out {len(data.holdout)}, val {len(data.val)} images")
    if arch is None:
        log(f"recipe {args.recipe}: " + ", ".join(f"{k.replace('_', '-')} {getattr(args, k)}" for k in RECIPE_KEYS))
    log_file = open(os.path.join(args.out, "log.jsonl"), "a") if d.main else None
    t_start, step0, trained = time.time(), run.step, []
    try:
        while run.step < total_steps:
            epoch, skip = divmod(run.step, steps_per_epoch)
            loader = epoch_loader(args, data, train_sampler, epoch, skip, d)
            model.train()
            if skip == 0 or run.sums is None:   # a resumed epoch keeps the sums of its first part
                run.sums = {"loss": 0.0, "flops": 0.0, "n": 0}
            t_epoch, seen = time.time(), 0
            for x, y in loader:
                x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
                if mix is not None:
                    x, y = mix(x, y)
                archs = [arch] if arch is not None else sampler(run.step, epoch)
                step_flops = np.mean([vitas.flops(a, space) for a in archs])
                if args.rank_dump:
                    trained.append(tuple(archs))
                loss = optimizer_step(run, ddp, x, y, archs, sides)
                seen += len(y) * d.world
                run.sums["loss"] += loss
                run.sums["flops"] += step_flops
                run.sums["n"] += 1
                if d.main and (run.step % args.log_every == 0 or run.step == total_steps):
                    rate, eta = seen / max(time.time() - t_epoch, 1e-9), (time.time() - t_start) / (run.step - step0) * (total_steps - run.step)
                    p = "" if sampler is None else f" p {sampler.prob(epoch):.2f}"
                    log(f"epoch {epoch + 1}/{args.epochs} step {run.step}/{total_steps} loss {run.sums['loss'] / run.sums['n']:.3f} "
                        f"lr {schedule.get_last_lr()[0]:.2e}{p} {step_flops / 1e6:.2f} MFLOPs {rate:.0f} img/s ETA {fmt_time(eta)}")
                if args.save_every and run.step % args.save_every == 0 and run.step % steps_per_epoch:
                    run.save()
                if args.stop_after and run.step >= args.stop_after:   # for tests: simulate an interruption
                    run.save()
                    return None
            run.record = end_of_epoch(run, val_loader, epoch, seen, time.time() - t_epoch)
            if d.main:
                log_file.write(json.dumps(run.record) + "\n")
                log_file.flush()
                plots.plot_curves(log_file.name, os.path.join(args.out, "curves.png"))
            run.save()
        log(f"done: {run.step} steps in {fmt_time(time.time() - t_start)}; checkpoint {run.path}")
        if args.rank_dump:   # for tests: what this rank trained and where it ended
            torch.save({"archs": trained, "model": model.state_dict()}, os.path.join(args.out, f"rank{d.rank}.pt"))
        return run.record
    finally:
        if log_file:
            log_file.close()


# -----------------------------------------------------------------------------
# Recipes and flags

# The super-transformer's training recipe. "v1" is the paper's first version exactly (one sampled
# network per step, bilateral sharing) with this project's earlier DeiT-like augmentation. "v2",
# the default, adds the second version's identity shifting and weak augmentation: of the recipes
# measured (README "Results"), it ranked architectures best per CPU-minute. Cyclic sharing (the
# runner-up), the sandwich and distillation ranked worse there and stay opt-in. Explicit flags
# override either.
RECIPE_KEYS = ("sharing", "sandwich", "distill", "identity_shift")
RECIPES = {
    "v1": {"sharing": "bilateral", "sandwich": None, "distill": False, "identity_shift": False, "randaug": 9, "reprob": 0.25},
    "v2": {"sharing": "bilateral", "sandwich": None, "distill": False, "identity_shift": True},
}
DEFAULT_RECIPE = "v2"
# Augmentation and regularisation where the recipe sets none: weak while training the
# super-transformer (v2), DeiT-like when retraining a found architecture.
REGULARISATION = {
    "super": {"smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0, "randaug": 0, "reprob": 0.0, "drop_path": 0.0},
    "retrain": {"smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0, "randaug": 9, "reprob": 0.25, "drop_path": 0.0},
}


def resolve_recipe(args):
    """Fill the flags left unset from the recipe (super-transformer) and the mode's regularisation
    defaults, in place; a recipe flag given to a retrain, or --distill without the sandwich, is an error."""
    retrain = args.arch is not None
    mode = "retrain" if retrain else "super"
    recipe = {} if retrain else RECIPES[args.recipe]
    if retrain:
        given = [k for k in RECIPE_KEYS if getattr(args, k) is not None]
        if given:
            raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in given)} shape super-transformer training; "
                            f"a retrain (--arch) trains one network: leave them out")
    for key in REGULARISATION[mode]:
        if getattr(args, key) is None:
            setattr(args, key, recipe.get(key, REGULARISATION[mode][key]))
    if not retrain:
        for key in RECIPE_KEYS:
            if getattr(args, key) is None:
                setattr(args, key, recipe[key])
        if args.distill and args.sandwich is None:
            raise UserError("--distill needs the sandwich (--sandwich N): the largest network of each step is the teacher")
    return args


def sandwich_arg(text):
    """--sandwich: 'off' or the number N >= 0 of drawn networks beside the largest and the smallest."""
    return None if text == "off" else number_arg(int, 0)(text)


def default_text(key):
    """How --help states a flag's default in each mode."""
    sup = {name: RECIPES[name].get(key, REGULARISATION["super"].get(key)) for name in RECIPES}
    sup = f"{sup[DEFAULT_RECIPE]}" + "".join(f", --recipe {n}: {v}" for n, v in sup.items() if n != DEFAULT_RECIPE and v != sup[DEFAULT_RECIPE])
    return f"default: {sup}" if key in RECIPE_KEYS else f"default: super-transformer {sup}; retrain {REGULARISATION['retrain'][key]}"


def get_parser():
    nat, pos, nonneg = number_arg(int, 0), number_arg(int, 1), number_arg(float, 0)
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("run")
    g.add_argument("--space", default=None, choices=sorted(vitas.PRESETS),
                   help="search-space preset (default tiny; with --init-from, the checkpoint's)")
    g.add_argument("--out", default="runs/super", help="output folder: checkpoint.pt, log.jsonl (default runs/super)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    g.add_argument("--seed", type=nat, default=0)
    g.add_argument("--epochs", type=pos, default=15)
    g.add_argument("--save-every", type=nat, default=0, help="also checkpoint every N steps (0: each epoch only)")
    g.add_argument("--log-every", type=pos, default=20, help="progress line every N steps")
    g.add_argument("--stop-after", type=nat, default=0, help=argparse.SUPPRESS)
    g.add_argument("--rank-dump", action="store_true", help=argparse.SUPPRESS)
    g = ap.add_argument_group("data")
    g.add_argument("--data", default="synthetic", help="synthetic | cifar10 | cifar100 | ImageFolder root with train/ and val/")
    g.add_argument("--data-root", default="data", help="where cifar10/cifar100 live (default ./data)")
    g.add_argument("--download", action="store_true", help="download cifar10/cifar100 into --data-root")
    g.add_argument("--holdout", type=holdout_arg, default=0.1,
                   help="training images kept out for the search to score archs on: a fraction below 1 or a count "
                        "(default 0.1: 600 of the 6,000 synthetic images, so one image is 0.17 points)")
    g.add_argument("--synthetic-size", type=number_arg(int, 10), default=6000, help="synthetic training images (val: a fifth, at least 100)")
    g.add_argument("--synthetic-classes", type=number_arg(int, 2), default=10)
    g.add_argument("--workers", type=nat, default=0, help="data-loader workers per process")
    g.add_argument("--eval-batch-size", type=pos, default=256)
    g.add_argument("--eval-limit", type=pos, default=None, help="evaluate on the first N val images only")
    g = ap.add_argument_group("super-transformer sampling and recipe")
    g.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
                   help="v1: the paper's first version exactly: one sampled network per step, bilateral sharing "
                        "(and DeiT-like augmentation). v2 (default; beyond v1, measured in README Results): v1 plus "
                        "the second version's identity shifting and weak augmentation. Cyclic sharing, the sandwich and "
                        "distillation (beyond v1; ranked worse per CPU-minute in README Results) are the flags below, which override the recipe.")
    g.add_argument("--uniform-epochs", type=nat, default=2, help="epochs of uniform sampling before the learned identity probability")
    g.add_argument("--flops-min", type=count_arg, default=None, help="FLOPs (MACs) window the learned identity probability aims at, e.g. 0.9G")
    g.add_argument("--flops-max", type=count_arg, default=None, help="e.g. 1.1G; without a window sampling stays uniform")
    g.add_argument("--throughput-min", type=number_arg(float, 0, lo_open=True), default=None, metavar="IMG/S",
                   help="instead of a FLOPs window: aim sampling at networks doing at least this many images/s on this "
                        "device (exported ViT, eval); a latency model is fitted to archs measured at start-up")
    g.add_argument("--throughput-max", type=number_arg(float, 0, lo_open=True), default=None, metavar="IMG/S",
                   help="upper end of the throughput window")
    g.add_argument("--throughput-batch", type=pos, default=None, help="batch of throughput measurements (default 16 on CPU, 128 on CUDA)")
    g.add_argument("--throughput-amp", action="store_true", help="measure throughput under bf16 autocast (CUDA)")
    g.add_argument("--calibration-seconds", type=nonneg, default=30,
                   help="about how long the throughput calibration measures (at least 12 archs, at most 64; default 30)")
    g.add_argument("--sharing", default=None, choices=sorted(vitas.SHARINGS),
                   help="left: the first channels; bilateral (v1): left and right slices each step, each with its own loss; "
                        "cyclic (v2, one pass a step): embedding channels as a ring, each width its own window. " + default_text("sharing"))
    g.add_argument("--sandwich", type=sandwich_arg, default=None, metavar="N|off",
                   help="beyond v1 (BigNAS): each step trains the largest and the smallest network (inside the FLOPs window) "
                        "and N drawn ones, gradients summed before one optimizer step. " + default_text("sandwich"))
    g.add_argument("--distill", default=None, action=argparse.BooleanOptionalAction,
                   help="beyond v1 (in-place distillation): the sandwich's other networks learn from the largest one's "
                        "soft predictions. " + default_text("distill"))
    g.add_argument("--identity-shift", default=None, action=argparse.BooleanOptionalAction,
                   help="v2: every drawn network has its identity blocks moved behind its real ones, so one network is one "
                        "path of the super-transformer. " + default_text("identity_shift"))
    g = ap.add_argument_group("retrain")
    g.add_argument("--arch", default=None, help="arch JSON (search.py's best_arch.json): retrain it as a plain ViT")
    g.add_argument("--init-from", default=None, help="super-transformer checkpoint to inherit the arch's weights from")
    g = ap.add_argument_group("evaluate")
    g.add_argument("--eval", default=None, metavar="CKPT",
                   help="evaluate a checkpoint without training: top-1/top-5/loss on val and on the held-out split, written "
                        "to eval.json beside it (a super-transformer checkpoint needs --arch: eval-ARCH.json)")
    g = ap.add_argument_group("optimisation, augmentation, regularisation")
    g.add_argument("--batch-size", type=pos, default=64, help="per process")
    g.add_argument("--lr", type=number_arg(float, 0, lo_open=True), default=2e-3)
    g.add_argument("--min-lr", type=nonneg, default=1e-5, help="end of the cosine (at most --lr)")
    g.add_argument("--weight-decay", type=nonneg, default=0.05)
    g.add_argument("--warmup-epochs", type=nonneg, default=1)
    g.add_argument("--smoothing", type=number_arg(float, 0, 1, hi_open=True), default=None, help="label smoothing; " + default_text("smoothing"))
    g.add_argument("--mixup", type=nonneg, default=None, help="MixUp alpha (DeiT: 0.8; 0: off); " + default_text("mixup"))
    g.add_argument("--cutmix", type=nonneg, default=None, help="CutMix alpha (DeiT: 1.0; 0: off); " + default_text("cutmix"))
    g.add_argument("--randaug", type=number_arg(int, 0, 30), default=None, help="RandAugment magnitude on real data (0: off); " + default_text("randaug"))
    g.add_argument("--reprob", type=number_arg(float, 0, 1), default=None, help="random-erasing probability on real data; " + default_text("reprob"))
    g.add_argument("--drop-path", type=number_arg(float, 0, 1, hi_open=True), default=None, help="stochastic depth (DeiT retrain: 0.1); " + default_text("drop_path"))
    g.add_argument("--clip-grad", type=nonneg, default=5.0, help="gradient-norm clip (0: off)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (for CUDA; slower on most CPUs)")
    return ap


def check_flops_window(ap, args):
    if args.flops_min is not None and args.flops_max is not None and args.flops_min > args.flops_max:
        ap.error(f"the FLOPs window is empty: --flops-min {args.flops_min:,} > --flops-max {args.flops_max:,}")


def parse_args(argv=None):
    ap = get_parser()
    args = ap.parse_args(argv)
    if args.min_lr > args.lr:
        ap.error(f"argument --min-lr: {args.min_lr:g} exceeds --lr {args.lr:g}; expected at most the peak learning rate")
    check_flops_window(ap, args)
    throughput = args.throughput_min is not None or args.throughput_max is not None
    if throughput and (args.flops_min is not None or args.flops_max is not None):
        ap.error("give a FLOPs window (--flops-min/--flops-max) or a throughput window (--throughput-min/--throughput-max), not both")
    if throughput and args.throughput_min is not None and args.throughput_max is not None and args.throughput_min > args.throughput_max:
        ap.error(f"the throughput window is empty: --throughput-min {args.throughput_min:g} > --throughput-max {args.throughput_max:g}")
    return args


def run_cli(fn, args):
    """Run fn(args) as a command: bad input is one line on stderr and exit code 2, and the
    process group is torn down on every path."""
    ok = False
    try:
        fn(args)
        ok = True
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        cleanup_distributed(barrier=ok)


def main(argv=None):
    run_cli(train, parse_args(argv))


if __name__ == "__main__":
    main()
