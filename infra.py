"""
The plumbing that train.py and search.py share, so that they can read as the method: the command
line (one-line errors, range-checked numbers), processes (env-based DDP), data (synthetic, CIFAR,
ImageFolder; the held-out split the search scores on), evaluation, checkpoints that load no code,
the optimiser's parameter groups and schedule, and throughput calibration. Nothing here is ViTAS
itself; vitas.py holds the model and the search space, train.py the training method.
"""
import argparse
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import json
import math
import numbers
import os
import random
import socket
import sys
import time
from contextlib import nullcontext
from decimal import Decimal, InvalidOperation

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

import vitas

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# -----------------------------------------------------------------------------
# Command line

class UserError(ValueError):
    """Bad input from the user: printed as one clear line, no traceback. Only this is caught so:
    any other exception is a bug and keeps its traceback."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("error: argument --lr: ..."), exit code 2, nothing written."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr, flush=True)
        sys.exit(2)


def parse_count(text):
    """A FLOPs or parameter count as an int: '1.0G', '900M', '350k', '1.2e9', '1200000' or a number.
    Decimal arithmetic, so '0.1G' is exactly 100000000; a fractional result is rounded."""
    bad = ValueError(f"cannot read {text!r} as a count; expected a number from 0 to 1e18, optionally ending in "
                     f"k, M or G (e.g. 1.0G, 900M, 350k, 1.2e9, 1200000)")
    if isinstance(text, bool) or not isinstance(text, (str, numbers.Real)):
        raise bad
    s = str(text).strip()
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(s[-1:].lower())   # decimal; a count has no milli
    try:
        value = Decimal(s[:-1] if scale else s) * (scale or 1)
    except InvalidOperation:
        raise bad from None
    if not value.is_finite() or not 0 <= value <= 10**18:   # beyond any network's count
        raise bad
    return int(value.to_integral_value())


def number_arg(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """argparse type: a finite int or float inside a range; the message names the value and the range
    (argparse adds the flag's name)."""
    rng = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, "
           f"{'inf' if hi is None else hi}{')' if hi_open or hi is None else ']'}")
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
    if not (0 <= v < 1 or (math.isfinite(v) and v >= 1 and v == int(v))):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction in [0, 1) (e.g. 0.1) or a whole number "
                                         f"of images (e.g. 2000)")
    return v if v < 1 else int(v)


def count_arg(text):
    """parse_count for argparse, which shows only an ArgumentTypeError's own message."""
    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_flops_window(ap, args):
    if args.flops_min is not None and args.flops_max is not None and args.flops_min > args.flops_max:
        ap.error(f"the FLOPs window is empty: --flops-min {args.flops_min:,} > --flops-max {args.flops_max:,}")


def run_cli(fn, args):
    """Run fn(args) as a command: bad input is one line on stderr and exit code 2, and the
    process group is torn down on every path."""
    ok = False
    try:
        fn(args)
        ok = True
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        cleanup_distributed(barrier=ok)


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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


def reuse_freed_memory():
    """Have glibc keep freed memory for the next tensor instead of handing it back to the OS
    (Linux with glibc; elsewhere a no-op returning False), as PyTorch's CPU tuning guide has
    jemalloc or tcmalloc do. By default glibc maps each block of more than about 128 KB to 32 MB
    afresh and unmaps it when freed, so the next tensor that size pays a page fault for every 4 KB
    it touches. A super-transformer step allocates a full-size gradient for every parameter it
    slices (zero-filled, the slice written in), about 90 MB a step at vitas-1g, where its plain
    ViT's gradients are the size of the slice: kept, ViTAS-C's one-side step costs 1.07-1.08x
    the plain step's, with glibc's defaults 1.10x (`python bench.py`, `--glibc-defaults`). The
    same holds for numpy's arrays (the bootstrap of `python experiment.py table`)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3         # glibc's malloc.h
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


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
        reuse_freed_memory()
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
        resize = ([T.Resize(int(size / 0.875), antialias=True), T.CenterCrop(size)] if real and size > 64
                  else [T.Resize((size, size), antialias=True)])
        return T.Compose(resize + norm)
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
    num_classes: int


def data_seed(args):
    """The seed of the synthetic data and of the held-out split: --data-seed, or else --seed."""
    return args.seed if getattr(args, "data_seed", None) is None else args.data_seed


def build_datasets(args, image_size):
    """args.data: 'synthetic', 'cifar10', 'cifar100' or an ImageFolder root with train/ and val/."""
    from torchvision import datasets
    kind = args.data
    seed = data_seed(args)
    if kind == "synthetic":
        n_train, n_val = args.synthetic_size, max(args.synthetic_size // 5, 100)
        tr = synthetic_images(n_train, args.synthetic_classes, image_size, seed)
        va = synthetic_images(n_val, args.synthetic_classes, image_size, seed + 1)
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
    train_idx, hold_idx = holdout_split(len(train_set), args.holdout, seed)
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


def mix_transform(args, num_classes):
    """Batch-level MixUp/CutMix (one of them per batch) from torchvision.transforms.v2."""
    from torchvision.transforms import v2 as T
    ops = ([T.MixUp(alpha=args.mixup, num_classes=num_classes)] if args.mixup > 0 else []) + \
          ([T.CutMix(alpha=args.cutmix, num_classes=num_classes)] if args.cutmix > 0 else [])
    return T.RandomChoice(ops) if ops else None


def epoch_loader(args, data, train_sampler, epoch, skip, d):
    """The epoch's training batches, after the `skip` ones a resumed epoch already trained on."""
    train_sampler.set_epoch(epoch)
    return DataLoader(data.train, batch_size=args.batch_size,
                      sampler=ResumeSampler(train_sampler, skip * args.batch_size),
                      num_workers=args.workers, pin_memory=d.device.type == "cuda", drop_last=True,
                      # its own generator: creating the iterator must not draw from the global RNG,
                      # or a resumed epoch would see other augmentations than the uninterrupted one
                      generator=torch.Generator().manual_seed(args.seed * 100003 + epoch * 1009 + d.rank))


# -----------------------------------------------------------------------------
# Evaluation


def amp_context(device, enabled):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


@torch.no_grad()
def evaluate(model, loader, d, arch=None, side=None, amp=False):
    """Top-1/top-5 (%) and mean loss of `model` over a loader sharded across ranks (counts are
    all-reduced): a SuperTransformer at `arch` and `side`, or a plain ViT where side is None."""
    was_training = model.training
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64, device=d.device)    # correct@1, correct@5, summed loss, n
    for x, y in loader:
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with amp_context(d.device, amp):
            logits = model(x) if side is None else model(x, arch, side)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top5 == y[:, None]
        stats += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), F.cross_entropy(logits.float(), y, reduction="sum"),
                              torch.tensor(len(y), device=d.device)]).double()
    d.all_reduce(stats)
    model.train(was_training)
    c1, c5, loss, n = stats.tolist()
    n = max(n, 1)
    return {"top1": 100 * c1 / n, "top5": 100 * c5 / n, "loss": loss / n, "n": int(stats[3].item())}


def supernet_of(ck):
    """The super-transformer of a super-transformer checkpoint, with its weights, and the sides it
    was trained on (left and right with bilateral sharing)."""
    if ck.get("mode") != "super":
        raise UserError("a retrain checkpoint holds one plain ViT; a super-transformer checkpoint is needed here")
    supernet = vitas.SuperTransformer(vitas.SearchSpace(**ck["space"]))
    supernet.load_state_dict(ck["model"])
    return supernet, vitas.SHARINGS[ck["args"].get("sharing", "bilateral")]


def evaluate_checkpoint(args):
    """--eval CKPT: top-1/top-5/loss on val and on the held-out split, no training: a retrain
    checkpoint's ViT, or the --arch slice of a super-transformer checkpoint (each side it was
    trained on). Data, split and val size come from the checkpoint; eval*.json beside it."""
    d = setup_distributed(args.device)
    ck = load_checkpoint(args.eval, "--eval")
    space = vitas.SearchSpace(**ck["space"])
    ck_args = argparse.Namespace(**{**ck["args"], "download": False, "workers": args.workers})
    if ck.get("mode") == "retrain":
        if args.arch:
            raise UserError(f"{args.eval} is a retrain checkpoint and holds its own arch; leave --arch out")
        arch = vitas.Arch.from_dict(ck["arch"])
        model, sides, name = vitas.ViT(arch, space), ("model",), "eval.json"
    else:
        if not args.arch:
            raise UserError(f"{args.eval} is a super-transformer checkpoint: give the sub-network to evaluate "
                            f"with --arch ARCH.json")
        arch, (model, sides) = load_arch_file(args.arch, space), supernet_of(ck)
        if scores_shifted(ck["args"]):
            arch = vitas.shift_identities(arch)   # the path that scores this network
        name = f"eval-{os.path.splitext(os.path.basename(args.arch))[0]}.json"
    if ck.get("mode") == "retrain":
        model.load_state_dict(ck["model"])
    model.to(d.device)
    data = build_datasets(ck_args, space.image_size)
    limit = args.eval_limit or ck_args.eval_limit
    results = {"checkpoint": os.path.abspath(args.eval), "step": ck["step"], "arch": arch.to_dict()}
    for split, dataset, lim in (("val", data.val, limit), ("holdout", data.holdout, None)):
        loader = eval_loader(dataset, args.eval_batch_size, d, args.workers, limit=lim)
        results[split] = {side: evaluate(model, loader, d, arch, None if side == "model" else side,
                                         getattr(ck_args, "amp", False))
                          for side in sides}
        d.log(f"{split:8s} " + "  ".join(f"{side}: top-1 {r['top1']:.2f}% top-5 {r['top5']:.2f}% loss {r['loss']:.4f} "
                                         f"({r['n']} images)" for side, r in results[split].items()))
    path = os.path.join(os.path.dirname(os.path.abspath(args.eval)), name)
    if d.main:
        write_json(path, results)
        d.log(f"wrote {path}")
    return results


# -----------------------------------------------------------------------------
# Run folders: one live run each


@contextlib.contextmanager
def run_folder(folder, d):
    """Hold `folder` for this run while the block runs: rank 0 takes an exclusive lock on
    folder/.lock (flock, which the kernel releases when the process dies, so the lock of a run that
    died is simply taken; NFS clients map it to a lock the server keeps) and writes its pid and host
    there. A second run into the folder, in this process or another, on any host sharing the
    folder, is refused on every rank with one line naming the holder, before it writes anything."""
    held, refusal = None, None
    if d.main:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, ".lock")
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.truncate(0)
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}) + "\n")
            f.flush()
            held = f
        except OSError as e:
            f.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            refusal = f"output folder {folder!r} is in use by another run ({lock_holder(path)}); wait for it to end, " \
                      f"or use another --out"
    if d.world > 1:
        shared = [refusal]
        dist.broadcast_object_list(shared, src=0)
        refusal = shared[0]
    if refusal:
        raise UserError(refusal)
    try:
        yield
    finally:
        if held is not None:
            held.close()                 # releases the lock; the file stays (a later run takes it)


def lock_holder(path):
    """'pid P on host H' from a lock file, or what is known."""
    try:
        with open(path) as f:
            who = json.loads(f.read())
        return f"pid {who['pid']} on host {who['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet"


def keep_log_lines(path, done, key="epoch"):
    """A resumed run's JSON-lines log cut back to what its checkpoint holds: the records with `key`
    <= done, each once, in order (a crash after a record was appended and before the checkpoint
    leaves a record the rerun writes again; a crash mid-append, a torn last line). Rewritten
    atomically, and only where something goes."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    keep, seen = [], set()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get(key, done + 1) <= done and record[key] not in seen:
            seen.add(record[key])
            keep.append(record)
    if len(keep) != len(lines):
        write_json(path, sorted(keep, key=lambda r: r[key]), lines=True)


def set_aside(path):
    """Move an earlier run's file out of a fresh run's way (log.jsonl -> log.before-<time>.jsonl);
    returns the new path, or None where there was none."""
    if not os.path.exists(path):
        return None
    stem, ext = os.path.splitext(path)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
    new = f"{stem}.before-{stamp}{ext}"
    os.replace(path, new)
    return new


# -----------------------------------------------------------------------------
# Checkpoints


# Checkpoints hold tensors and plain Python values only (dicts, lists, numbers, strings), so they
# load with torch.load(weights_only=True): opening a checkpoint someone sent you runs no code.
CHECKPOINT_FORMAT = 2   # 1: the first format, which pickled numpy RNG state (loadable only by running its pickle)


def scores_shifted(ck_args):
    """Whether a super-transformer trained with these args scores (and searches) each network on
    its identity-shifted path: --identity-shift train or search (True in checkpoints before the
    choice had three values)."""
    return ck_args.get("identity_shift", "off") in ("train", "search", True)


def save_checkpoint(path, state):
    """Atomic: a crash or a full disk mid-write leaves the previous checkpoint intact (a failed write
    is one line: UserError)."""
    tmp = f"{path}.tmp"
    try:
        torch.save({**state, "format": CHECKPOINT_FORMAT}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:        # torch reports a failed write as RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        kept = "the previous checkpoint is kept" if os.path.exists(path) else "no checkpoint was written"
        raise UserError(f"could not write checkpoint {path!r} ({type(e).__name__}: {first_line(e)}); {kept}; "
                        f"free disk space and rerun the same command to resume") from None


def load_checkpoint(path, flag=None):
    """A vitas checkpoint as a dict, loaded without running code; anything else is a UserError.
    `flag`: the option that named an input file (--eval, --init-from, --ckpt); None for a run's own
    checkpoint, which a new run may simply replace."""
    path = str(path)
    what = f"{flag} {path!r}" if flag else f"checkpoint {path!r}"
    fix = ("; expected a checkpoint.pt written by train.py" if flag else
           "; delete it to start afresh, or use another --out")
    if not os.path.isfile(path):
        raise UserError(f"{what} does not exist" + (fix if flag else ""))
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        unsafe = unsafe_globals(path)   # what the pickle would call: weights_only refuses every such global
        if unsafe and all(g.startswith("numpy") for g in unsafe):   # format 1 pickled numpy's RNG state
            raise UserError(f"{what} was written by an earlier vitas "
                            f"(format 1, which loads only by running its pickle); "
                            f"retrain it with this version (the same command into a new --out)") from None
        if unsafe:
            raise UserError(f"{what} asks to run Python code when loaded ({', '.join(unsafe[:3])}); refused: vitas "
                            f"checkpoints hold tensors and plain values only") from None
        # truncated or foreign files fail in many ways inside torch, whose messages may advise
        # loading unsafely (weights_only=False): only the kind of failure is passed on
        raise UserError(f"{what} is not a readable vitas checkpoint (corrupt, truncated or another kind of file: "
                        f"{type(e).__name__}){fix}") from None
    if not isinstance(ck, dict) or not {"model", "space", "args"} <= ck.keys():
        raise UserError(f"{what} is not a vitas checkpoint (it lacks the model, space and args entries){fix}")
    if ck.get("mode") == "super" and any(k.endswith(".vector") for k in ck["model"]):
        raise UserError(f"{what} holds a super-transformer in the stacked layout of vitas before 2026-12-02 "
                        f"(blocks.N.weight / .vector); the super-transformer's parameters are now named as the "
                        f"plain ViT's: train it again with this version (the same command into a new --out)")
    return ck


def unsafe_globals(path):
    """The Python globals a checkpoint's pickle names beyond what weights_only allows ([] if unknown)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []


def first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def rng_state():
    """Every generator's state as tensors and plain values (see CHECKPOINT_FORMAT)."""
    version, keys, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(keys), gauss],
            "numpy": [kind, torch.from_numpy(mt.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s):
    version, keys, gauss = s["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, mt, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((kind, mt.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(s["torch"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def write_json(path, obj, lines=False):
    """Atomic: a crash mid-write leaves the previous file whole. lines: one JSON object per line."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        if lines:
            f.writelines(json.dumps(r) + "\n" for r in obj)
        else:
            json.dump(obj, f, indent=1)
    os.replace(tmp, path)


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


# -----------------------------------------------------------------------------
# Throughput calibration: a window in images/s on this device instead of FLOPs


def throughput_measure_flags(group):
    """The flags of how throughput is measured, for train.py's and search.py's throughput budgets."""
    group.add_argument("--throughput-batch", type=number_arg(int, 1), default=None,
                       help="batch of throughput measurements (default 16 on CPU, 128 on CUDA)")
    group.add_argument("--throughput-amp", action="store_true", help="measure throughput under bf16 autocast (CUDA)")


def throughput_batch(args, device):
    """--throughput-batch, or its default for the device."""
    return args.throughput_batch or (128 if device.type == "cuda" else 16)


def calibrate_throughput(args, space, d):
    """A LatencyModel of this device fitted to the images/s of sampled archs measured for about
    --calibration-seconds (rank 0 measures, every rank gets the same fit). Returns the calibration
    record a checkpoint keeps, so a resumed run does not measure again."""
    batch = throughput_batch(args, d.device)
    record = [None]
    if d.main:
        meter = vitas.ThroughputMeter(space, d.device, batch, args.throughput_amp, max_seconds=1.0)
        rng = np.random.default_rng([args.seed, 4])
        archs, start = [space.max_arch(), space.empty_arch()], time.time()
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
    d.log(f"throughput calibration on {record['device']} (batch {record['batch']}): "
        f"{record['measured']} archs measured in "
        f"{record['seconds']:.0f} s, {record['slowest'][0]:,.0f} to {record['fastest'][0]:,.0f} images/s")
    return record


def check_throughput_window(sampler, calibration, window, d):
    """Fraction of 16 archs drawn as training draws them (learned phase) whose measured images/s
    lie in `window`: how well the fitted latency model steers sampling on this device."""
    inside = [None]
    if d.main:
        meter = vitas.ThroughputMeter(sampler.space, calibration["device"], calibration["batch"], calibration["amp"],
                                      max_seconds=1.0)
        rng = np.random.default_rng([sampler.seed, 5])
        inside = [float(np.mean([window[0] <= meter(sampler.draw(rng, learned=True)) <= window[1] for _ in range(16)]))]
    if d.world > 1:
        dist.broadcast_object_list(inside, src=0)
    return inside[0]
