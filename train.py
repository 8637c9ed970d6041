"""
Train the ViTAS super-transformer (arXiv 2106.13700, section 3), or retrain one found architecture.

    python train.py --epochs 3 --flops-min 2M --flops-max 4M             # synthetic data, tiny space
    torchrun --standalone --nproc_per_node=2 train.py --out runs/super --flops-min 2M --flops-max 4M
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --standalone --nproc_per_node=2 --max-restarts=3 train.py ...
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        train.py --space vitas-1g --data /data/imagenet --flops-min 0.9G --flops-max 1.1G --amp --device cuda
    python train.py --arch runs/search/best_arch.json --out runs/retrain  # retrain a found arch from scratch
    python train.py --eval runs/retrain/checkpoint.pt                      # evaluate, no training

The file follows the paper: (1) sampling: each step draws a sub-network, uniformly for
--uniform-epochs, then with the learned identity probability that puts it in the FLOPs window;
(2) the step: bilateral sharing trains the drawn network on its left and on its right channels;
(3) the loop; (4) recipes and flags. --recipe v1 is the paper's first version's method (one sampled
network a step, bilateral sharing, binomial depth) with DeiT-like augmentation; with --mixup 0.8
--cutmix 1.0 its augmentation is the published one. v1-code is v1 as the authors' code trains it;
v2 adds the second version's identity shifting and weak augmentation; the default, v2+strat
(beyond the paper), is v2 drawing the window's patch-size and depth cells alike, and fair (beyond
the paper) also trains every block position alike (RESULTS.md). Cyclic sharing, the
sandwich rule and in-place distillation (beyond v1) are opt-in flags. A retrain is the same loop
with one fixed arch and one pass a step.

Every rank draws the same archs from a generator seeded by (seed, step): no communication, and a
resumed run draws what the uninterrupted one would have. Re-running the same command resumes from
--out/checkpoint.pt. The command line, DDP set-up, data, evaluation and checkpoints are in infra.py.
"""
import argparse
import dataclasses
import json
import os
import random
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler

import infra
import plots
import vitas
from infra import UserError, number_arg

# -----------------------------------------------------------------------------
# 1. Sampling (section 3): uniform, then the learned identity probability


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
        a = mid(space.attn_for[h])
        middle = vitas.Arch(mid(space.patch_sizes), mid(space.embed_dims),
                            (vitas.Block(h, a, mid(space.mlp_dims)),) * space.depth)
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


SAMPLINGS = ("binomial", "depth-balanced", "stratified")
IDENTITY_SHIFTS = ("off", "train", "search")


def with_depth(arch, depth, rng):
    """`arch` (every block real) with all but `depth` blocks, chosen at random, made identities."""
    keep = set(rng.choice(len(arch.blocks), depth, replace=False).tolist())
    return vitas.Arch(arch.patch_size, arch.embed_dim,
                      tuple(b if i in keep else None for i, b in enumerate(arch.blocks)))


def draw_in_cell(space, rng, cell):
    """An arch of `cell` = (patch size, or None for a uniform one; depth): every width uniform,
    `depth` real blocks at random positions, so every block position is trained alike."""
    patch, depth = cell
    arch = with_depth(space.sample(rng, 0.0), depth, rng)
    return arch if patch is None else vitas.Arch(patch, arch.embed_dim, arch.blocks)


def all_cells(space, by_patch):
    """Every (patch, depth) cell of the space; by_patch False: (None, depth), patch drawn uniformly."""
    return [(p, d) for p in (space.patch_sizes if by_patch else (None,)) for d in range(1, space.depth + 1)]


def window_cells(space, inside, by_patch, seed=0, n=200, min_share=0.02):
    """The cells of all_cells whose draws (draw_in_cell) land inside the window (`inside`) at least
    `min_share` of the time: the cells a window-bound sampler can train without endless redraws."""
    rng = np.random.default_rng([seed, 6])
    return [c for c in all_cells(space, by_patch)
            if np.mean([inside(draw_in_cell(space, rng, c)) for _ in range(n)]) >= min_share]


class ArchSampler:
    """The sub-networks of each training step.

    Uniform phase for the first `uniform_epochs` (every choice uniform, each block identity with
    probability 1/2), then the learned phase that keeps sampled networks in the FLOPs window;
    out-of-window draws are redrawn, bounded. `sampling` says how the learned phase draws:
      binomial        the paper's: each block identity with the learned identity probability
                      (vitas.solve_identity_prob); depth is binomial, so deep networks are rare
      depth-balanced  beyond the paper: the depth uniform among the depths the window admits, its
                      real blocks at random positions, widths and patch size uniform
      stratified      beyond the paper: a (patch size, depth) cell of the window uniformly, then
                      as depth-balanced, so every patch size and every depth is trained alike
    (the cell-based samplers draw every cell of the space in the uniform phase). With `sandwich` N
    (beyond v1) a step trains the largest and the smallest network (reported_archs) and N drawn
    ones; with `identity_shift` (v2) every draw has its identities moved to the end, so block k
    trains only when the depth is at least k. The archs of global step s come from a generator
    seeded by (seed, s)."""

    def __init__(self, space, seed, uniform_epochs, window=None, identity_prob=None, max_tries=100, sandwich=None,
                 identity_shift=False, cost=None, sampling="binomial"):
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.space, self.seed, self.uniform_epochs, self.max_tries = space, seed, uniform_epochs, max_tries
        self.sandwich, self.identity_shift = sandwich, identity_shift
        self.throughput_calibration = None   # a throughput window's (infra.calibrate_throughput)
        # the window (lo, hi; None: open) is in FLOPs, or in the units of `cost` (a LatencyModel: seconds per image)
        self.cost = cost or (lambda a: vitas.flops(a, space))
        lo, hi = window or (None, None)
        self.window = None if lo is None and hi is None else (lo or 0, hi or self.cost(space.max_arch()))
        self.identity_prob = identity_prob
        if self.window is not None and identity_prob is None:
            try:
                self.identity_prob = vitas.solve_identity_prob(space, *self.window, cost=cost,
                                                               what="FLOPs" if cost is None else "seconds-per-image")
            except ValueError as e:   # an empty or unreachable window: the user's to fix
                raise UserError(str(e)) from None
        self.reports = reported_archs(space, self.window, cost)
        self.ends = [self.reports["largest"], self.reports["smallest"]]
        self.uniform_cells = self.cells = None
        if sampling != "binomial":
            self.uniform_cells = all_cells(space, by_patch=sampling == "stratified")
            self.cells = self.uniform_cells if self.window is None else window_cells(
                space, self.inside, sampling == "stratified", seed)

    def window_check(self, n=1000):
        """Fraction of networks inside the window: raw draws at the learned p, and as trained; and
        their mean FLOPs."""
        rng = np.random.default_rng([self.seed, 2])
        raw = np.mean([self.inside(self.space.sample(rng, self.identity_prob)) for _ in range(n)])
        drawn = [self.draw(rng, learned=True) for _ in range(n)]
        return raw, np.mean([self.inside(a) for a in drawn]), np.mean([vitas.flops(a, self.space) for a in drawn])

    def inside(self, arch):
        return self.window[0] <= self.cost(arch) <= self.window[1]

    def learned(self, epoch):
        return epoch >= self.uniform_epochs and self.window is not None

    def prob(self, epoch):
        """Identity probability in force at `epoch` (1/2 in the uniform phase; None in the learned
        phase of a cell-based sampler, where the cell, not the identity probability, sets the depth)."""
        if not self.learned(epoch):
            return 0.5
        return self.identity_prob if self.cells is None else None

    def draw(self, rng, learned):
        if self.cells is not None:   # the cell first, once: redraws below keep it
            cells = self.cells if learned else self.uniform_cells
            cell = cells[rng.integers(len(cells))]
        for _ in range(self.max_tries if learned else 1):   # bounded resampling; the last draw stands if none fits
            if self.cells is None:   # each block identity with the identity probability (1/2 when uniform)
                arch = self.space.sample(rng, self.identity_prob if learned else None)
            else:
                arch = draw_in_cell(self.space, rng, cell)
            if not learned or self.inside(arch):
                break
        return vitas.shift_identities(arch) if self.identity_shift else arch

    def __call__(self, step, epoch):
        """The archs step `step` trains: [drawn], or [largest, smallest, N drawn] with the sandwich."""
        rng = np.random.default_rng([self.seed, 0, step])
        if self.sandwich is None:
            return [self.draw(rng, self.learned(epoch))]
        return self.ends + [self.draw(rng, self.learned(epoch)) for _ in range(self.sandwich)]


def epoch_sums(space):
    """An epoch's running sums: loss, FLOPs, steps, and what the steps trained (the sampler
    statistics): per block position and per patch size the steps that trained it, per depth
    0..D the drawn networks that had it. Plain values: they go into the checkpoint."""
    return {"loss": 0.0, "flops": 0.0, "n": 0, "blocks": [0] * space.depth,
            "patches": {str(p): 0 for p in space.patch_sizes}, "depths": [0] * (space.depth + 1)}


def add_step(sums, loss, flops, archs, space):
    """Add one step (its mean loss and FLOPs, and its archs) to epoch_sums, in place."""
    sums["loss"] += loss
    sums["flops"] += flops
    sums["n"] += 1
    for i in range(space.depth):
        sums["blocks"][i] += any(a.blocks[i] is not None for a in archs)
    for p in space.patch_sizes:
        sums["patches"][str(p)] += any(a.patch_size == p for a in archs)
    for a in archs:
        sums["depths"][a.depth] += 1


def sampler_statistics(sums):
    """The share of steps that trained each block position and each patch size, and the share of
    drawn networks of each depth 0..D: who the sampler trains, and who it starves."""
    steps, archs = max(sums["n"], 1), max(sum(sums["depths"]), 1)
    return {"block_share": [c / steps for c in sums["blocks"]],
            "patch_share": {p: c / steps for p, c in sums["patches"].items()},
            "depth_share": [c / archs for c in sums["depths"]]}


class FixedArch:
    """A retrain's sampler: the one arch it trains, every step (its plain ViT takes no arch)."""

    def __init__(self, arch):
        self.reports = {"model": arch}

    def __call__(self, step, epoch):
        return [self.reports["model"]]

    def prob(self, epoch):
        return None


def make_sampler(args, space, d, calibration=None):
    """The super-transformer's ArchSampler, its FLOPs (or throughput) window calibrated and
    checked; `calibration`: a resumed run's throughput calibration, reused as it is."""
    log, cost, window = d.log, None, (args.flops_min, args.flops_max)
    if args.throughput_min is not None or args.throughput_max is not None:
        calibration = calibration or infra.calibrate_throughput(args, space, d)
        fast, slow = calibration["fastest"], calibration["slowest"]
        tmin, tmax = args.throughput_min or slow[0] / 2, args.throughput_max or fast[0] * 2
        if tmin > fast[0] or tmax < slow[0]:
            raise UserError(f"throughput window [{tmin:g}, {tmax:g}] images/s is out of reach on "
                            f"{calibration['device']}: the fastest measured arch does {fast[0]:,.0f} ({fast[1]}), "
                            f"the slowest {slow[0]:,.0f} ({slow[1]})")
        cost, window = vitas.LatencyModel(space, calibration["coef"]), (1.0 / tmax, 1.0 / tmin)   # seconds per image
    sampler = ArchSampler(space, args.seed, args.uniform_epochs, window, sandwich=args.sandwich,
                          identity_shift=args.identity_shift == "train", cost=cost, sampling=args.sampling)
    sampler.throughput_calibration = calibration
    if sampler.window is not None:
        raw, inside, mean = sampler.window_check()
        what = "FLOPs window" if cost is None else "throughput window (predicted)"
        log(f"learned identity probability {sampler.identity_prob:.3f} for the {what}: {100 * raw:.0f}% of raw draws "
            f"inside, {100 * inside:.0f}% after resampling, mean {mean / 1e6:.2f} MFLOPs")
        if inside < 0.5:
            raise UserError(f"only {100 * inside:.0f}% of sampled networks reach the {what}; widen it")
        if cost is not None and "inside" not in calibration:
            calibration["inside"] = infra.check_throughput_window(sampler, calibration,
                                                                  (1 / window[1], 1 / window[0]), d)
            log(f"check: {100 * calibration['inside']:.0f}% of 16 freshly drawn archs measure inside "
                f"the throughput window")
    log("reported each epoch" + (" (and the sandwich's ends)" if args.sandwich is not None else "") + ": " +
        ", ".join(f"{k} {a} ({vitas.flops(a, space) / 1e6:.2f} MFLOPs)" for k, a in sampler.reports.items()))
    return sampler


# -----------------------------------------------------------------------------
# 2. The step: bilateral sharing


def distill_loss(logits, teacher_logits):
    """Cross-entropy against the teacher's soft predictions; the teacher gets no gradient."""
    return -(F.softmax(teacher_logits.detach().float(), dim=-1) * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def train_step(ddp, x, y, archs, sides, args, d):
    """Forward and backward of one step's passes into summed gradients. Bilateral sharing (section
    3) is `sides` = ("left", "right"): every drawn arch is trained on its first and on its last
    channels, so every channel is trained about equally often; each slice with its own loss, or
    (--bilateral-loss summed, the authors' code) one loss on the sum of both slices' logits. A
    retrain has one pass, side None (the plain ViT). The first arch (the largest with the sandwich)
    learns from the labels; with --distill the others learn from its soft predictions on the same
    side. DDP all-reduces on the last backward only. Returns the summed loss, all-reduced (every
    rank then takes the same decisions), and the number of losses."""
    if args.bilateral_loss == "summed" and len(sides) > 1:   # the authors' code: one loss on left + right logits
        losses = [(i, [(side, a) for side in sides]) for i, a in enumerate(archs)]
    else:                                                    # a loss per pass
        losses = [(i, [(side, a)]) for side in sides for i, a in enumerate(archs)]
    loss_sum, teacher = torch.zeros((), device=d.device), None
    for n, (i, passes) in enumerate(losses):
        sync = ddp.no_sync() if d.world > 1 and n < len(losses) - 1 else nullcontext()
        with sync:
            with infra.amp_context(d.device, args.amp):
                outs = [ddp(x) if side is None else ddp(x, a, side) for side, a in passes]
                out = sum(outs[1:], outs[0])
                if i > 0 and args.distill:
                    loss = distill_loss(out, teacher)
                else:
                    loss = F.cross_entropy(out.float(), y, label_smoothing=args.smoothing)
                    teacher = out.detach()
            loss.backward()
        loss_sum += loss.detach()
    return d.all_reduce(loss_sum) / d.world, len(losses)


def optimizer_step(run, x, y, archs):
    """One optimizer step on this step's archs (train_step's passes); their mean loss."""
    run.optimizer.zero_grad(set_to_none=True)
    loss_all, passes = train_step(run.ddp, x, y, archs, run.sides, run.args, run.d)
    if not torch.isfinite(loss_all):
        raise UserError(f"non-finite loss at step {run.step} (archs {', '.join(map(str, archs))}); the last good "
                        f"checkpoint in {run.path} is intact — lower --lr or enable --clip-grad")
    if run.args.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.args.clip_grad)
    run.optimizer.step()
    run.schedule.step()
    run.step += 1
    return loss_all.item() / passes


# -----------------------------------------------------------------------------
# 3. The loop


@dataclasses.dataclass
class Run:
    """A training run: its parts, what its checkpoint holds, and where it stands."""
    args: argparse.Namespace
    d: infra.Dist
    space: vitas.SearchSpace
    arch: object                 # the retrain's arch; None for the super-transformer
    model: torch.nn.Module
    ddp: torch.nn.Module         # the model, DDP-wrapped where distributed
    optimizer: torch.optim.Optimizer
    schedule: object
    sampler: object              # ArchSampler, or FixedArch for a retrain
    sides: tuple                 # the slices each drawn arch is trained on (None: a plain ViT)
    data: infra.Datasets
    train_sampler: DistributedSampler
    val_loader: object           # the reported archs' evaluation, sharded across ranks
    mix: object                  # batch MixUp/CutMix, or None
    steps_per_epoch: int
    step: int = 0
    sums: dict = None            # this epoch's running sums (kept in the checkpoint)
    record: dict = None          # the last epoch's log record
    seen: int = 0                # images this process trained on this epoch, and since when
    t_epoch: float = 0.0

    @property
    def path(self):
        return os.path.join(self.args.out, "checkpoint.pt")

    @property
    def total_steps(self):
        return self.args.epochs * self.steps_per_epoch

    def save(self):
        states = [None] * self.d.world
        if self.d.world > 1:   # every rank's RNG (augmentation, drop path) so a resume is exact
            dist.all_gather_object(states, infra.rng_state())
        else:
            states = [infra.rng_state()]
        if self.d.main:
            infra.save_checkpoint(self.path, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "step": self.step,
                "epoch": self.step // self.steps_per_epoch, "epoch_sums": self.sums, "record": self.record,
                "rng": states, "args": vars(self.args), "space": self.space.to_dict(), "world": self.d.world,
                **({} if self.arch is not None else {"identity_prob": self.sampler.identity_prob,
                                                     "throughput_calibration": self.sampler.throughput_calibration}),
                "arch": None if self.arch is None else self.arch.to_dict(),
                "mode": "super" if self.arch is None else "retrain"})

    def resume(self, ck):
        """Continue from `ck`, the checkpoint in --out (None: there is none), refusing one of another run."""
        if ck is None:
            return
        if ck.get("arch") != (None if self.arch is None else self.arch.to_dict()):
            raise UserError(f"{self.path} belongs to another run (arch differs); use another --out or delete it")
        if ck["space"] != self.space.to_dict():
            raise UserError(f"{self.path} was trained on another search space (--space, --patch-sizes or the data's "
                            f"classes differ); resume with the same flags, or use another --out")
        changed = [k for k in RECIPE_KEYS if ck["args"].get(k, RECIPES["v1"].get(k)) != getattr(self.args, k)]
        if self.arch is None and changed:
            raise UserError(f"{self.path} was trained with other "
                            f"{', '.join('--' + k.replace('_', '-') for k in changed)}; "
                            f"resume with the same recipe, or use another --out")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.schedule.load_state_dict(ck["schedule"])
        self.step, self.sums, self.record = ck["step"], ck["epoch_sums"], ck["record"]
        if self.arch is None:
            self.sampler.identity_prob = ck["identity_prob"]
        infra.set_rng_state(ck["rng"][min(self.d.rank, len(ck["rng"]) - 1)])
        self.d.log(f"resumed from {self.path} at step {self.step} (epoch {self.step // self.steps_per_epoch})")


def run_space(args, init, log):
    """The --space preset (with --patch-sizes, only those patch sizes of it), or for --init-from
    (`init`, its checkpoint) the space of the checkpoint whose weights are inherited (an explicit
    --space that differs from it is refused)."""
    if args.patch_sizes is not None and args.arch is not None:
        raise UserError("--patch-sizes restricts a super-transformer's space; a retrain (--arch) trains one network: "
                        "leave it out")
    if init is None:
        args.space = args.space or "tiny"
        space = vitas.SearchSpace.preset(args.space)
        if args.patch_sizes is None:
            return space
        other = sorted(set(args.patch_sizes) - set(space.patch_sizes))
        if other:
            raise UserError(f"--patch-sizes {' '.join(map(str, other))}: not in space {args.space}, whose patch sizes "
                            f"are {' '.join(map(str, space.patch_sizes))}")
        patches = tuple(sorted(set(args.patch_sizes)))
        log(f"search space {args.space}, restricted to patch size(s) {' '.join(map(str, patches))}")
        return dataclasses.replace(space, patch_sizes=patches)
    name = init["args"].get("space")
    if args.space is not None and args.space != name:
        raise UserError(f"--space {args.space} differs from the space of --init-from {args.init_from} ({name}); leave "
                        f"--space out: the checkpoint's space is used")
    args.space = name
    log(f"search space {name} of {args.init_from}")
    return vitas.SearchSpace(**init["space"])


def build_model(args, space, arch, init, d):
    """The SuperTransformer, or for a retrain the plain ViT of `arch`, from scratch or (--init-from)
    with the weights it inherits from a super-transformer checkpoint (`init`)."""
    if arch is None:
        return vitas.SuperTransformer(space, args.drop_path)
    if init is not None:
        supernet, sides = infra.supernet_of(init)
        side = sides[0]
        d.log(f"retrain {arch} from the weights inherited from {args.init_from} ({side} slice)")
        return vitas.export(supernet, arch, side, args.drop_path)
    d.log(f"retrain {arch} from scratch")
    return vitas.ViT(arch, space, args.drop_path)


def build_run(args, d):
    """Space, data, model (DDP-wrapped where distributed), sampler, optimiser and schedule; resumed
    from --out where a checkpoint is there."""
    log = d.log
    if args.init_from and not args.arch:
        raise UserError("--init-from inherits weights for a retrain: give the arch to retrain with --arch")
    init = infra.load_checkpoint(args.init_from, "--init-from") if args.init_from else None
    own = os.path.join(args.out, "checkpoint.pt")
    resumed = infra.load_checkpoint(own) if os.path.exists(own) else None   # read once: resume, calibration
    space = run_space(args, init, log)
    data = infra.build_datasets(args, space.image_size)
    if space.num_classes != data.num_classes:   # the data's class count wins
        log(f"data has {data.num_classes} classes, the search space {space.num_classes}: using {data.num_classes}")
        space = dataclasses.replace(space, num_classes=data.num_classes)
    arch = infra.load_arch_file(args.arch, space) if args.arch is not None else None
    model = build_model(args, space, arch, init, d).to(d.device)
    if arch is not None:
        log(f"  {vitas.flops(arch, space) / 1e6:.2f} MFLOPs, {vitas.params(arch, space) / 1e6:.3f} M params")
    ddp = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
              find_unused_parameters=arch is None) if d.world > 1 else model   # a step uses slices
    sampler = (make_sampler(args, space, d, resumed and resumed.get("throughput_calibration")) if arch is None
               else FixedArch(arch))
    sides = vitas.SHARINGS[args.sharing] if arch is None else (None,)

    train_sampler = DistributedSampler(data.train, num_replicas=d.world, rank=d.rank, shuffle=True, seed=args.seed,
                                       drop_last=True)
    steps_per_epoch = len(train_sampler) // args.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size {args.batch_size} x {d.world} processes exceeds the {len(data.train)} "
                        f"training images")
    optimizer = torch.optim.AdamW(infra.param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, infra.warmup_cosine(
        args.warmup_epochs * steps_per_epoch, args.epochs * steps_per_epoch, args.min_lr / args.lr))
    val_loader = infra.eval_loader(data.val, args.eval_batch_size, d, args.workers, limit=args.eval_limit)
    run = Run(args, d, space, arch, model, ddp, optimizer, schedule, sampler, sides, data, train_sampler, val_loader,
              infra.mix_transform(args, space.num_classes), steps_per_epoch)
    os.makedirs(args.out, exist_ok=True)
    run.resume(resumed)
    start_log(run, resumed is not None)
    log(f"{'retrain' if arch is not None else 'super-transformer'} | {d.world} process(es) on {d.device} | "
        f"batch {args.batch_size} per process, effective {args.batch_size * d.world} | "
        f"{steps_per_epoch} steps/epoch x {args.epochs} epochs | "
        f"train {len(data.train)}, held-out {len(data.holdout)}, val {len(data.val)} images")
    if arch is None:
        log(f"recipe {args.recipe}: " + ", ".join(f"{k.replace('_', '-')} {getattr(args, k)}" for k in RECIPE_KEYS))
    return run


def start_log(run, resumed):
    """log.jsonl as the checkpoint has it: a resumed run keeps the epochs its checkpoint completed,
    each once (an epoch logged just before a crash, and not saved, is trained and logged again); a
    fresh run starts its own, an earlier run's log set aside as log.before-<time>.jsonl."""
    path = os.path.join(run.args.out, "log.jsonl")
    if not run.d.main:
        return
    if resumed:
        infra.keep_log_lines(path, run.step // run.steps_per_epoch)
    elif aside := infra.set_aside(path):
        run.d.log(f"{path} was an earlier run's (no checkpoint beside it): moved to {aside}")


def train_epoch(run, epoch, t_start, step0):
    """The steps of `epoch` from where the run stands (a resumed epoch skips what it trained)."""
    args, d = run.args, run.d
    skip = run.step - epoch * run.steps_per_epoch
    if skip == 0 or run.sums is None:   # a resumed epoch keeps the sums of its first part
        run.sums = epoch_sums(run.space)
    run.seen, run.t_epoch = 0, time.time()
    run.model.train()
    for x, y in infra.epoch_loader(args, run.data, run.train_sampler, epoch, skip, d):
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        if run.mix is not None:
            x, y = run.mix(x, y)
        archs = run.sampler(run.step, epoch)                 # 1. this step's sub-networks
        loss = optimizer_step(run, x, y, archs)              # 2. their passes (bilateral), one optimizer step
        flops = float(np.mean([vitas.flops(a, run.space) for a in archs]))
        run.seen += len(y) * d.world
        add_step(run.sums, loss, flops, archs, run.space)
        if d.main and (run.step % args.log_every == 0 or run.step == run.total_steps):
            rate = run.seen / max(time.time() - run.t_epoch, 1e-9)
            eta = (time.time() - t_start) / (run.step - step0) * (run.total_steps - run.step)
            prob = run.sampler.prob(epoch)
            p = "" if prob is None else f" p {prob:.2f}"
            d.log(f"epoch {epoch + 1}/{args.epochs} step {run.step}/{run.total_steps} "
                  f"loss {run.sums['loss'] / run.sums['n']:.3f} lr {run.schedule.get_last_lr()[0]:.2e}{p} "
                  f"{flops / 1e6:.2f} MFLOPs {rate:.0f} img/s ETA {infra.fmt_time(eta)}")
        if args.save_every and run.step % args.save_every == 0 and run.step % run.steps_per_epoch:
            run.save()


def end_of_epoch(run, epoch):
    """Evaluate the reported archs (a retrain: its model) on val; the epoch's record, appended to
    log.jsonl (one JSON object per epoch) and drawn in curves.png."""
    args, d, space = run.args, run.d, run.space
    evals = {k: infra.evaluate(run.model, run.val_loader, d, a, run.sides[0], args.amp)
             for k, a in run.sampler.reports.items()}
    n = max(run.sums["n"], 1)
    record = {"epoch": epoch + 1, "step": run.step, "loss": run.sums["loss"] / n, "lr": run.schedule.get_last_lr()[0],
              "identity_prob": run.sampler.prob(epoch), "mean_flops": run.sums["flops"] / n,
              "images_per_s": run.seen / max(time.time() - run.t_epoch, 1e-9),
              "val": {k: {"top1": v["top1"], "top5": v["top5"], "loss": v["loss"], "n": v["n"]}
                      for k, v in evals.items()}}
    if run.arch is None:
        record["reported"] = {k: {"arch": a.to_dict(), "flops": vitas.flops(a, space)}
                              for k, a in run.sampler.reports.items()}
        record["sampled"] = sampler_statistics(run.sums)
    d.log("  val " + "  ".join(f"{k} top-1 {v['top1']:.1f}% top-5 {v['top5']:.1f}%" for k, v in evals.items()))
    if d.main:
        with open(os.path.join(args.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        plots.plot_curves(os.path.join(args.out, "log.jsonl"), os.path.join(args.out, "curves.png"))
    return record


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def train(args):
    """Train the super-transformer, or (--arch) retrain one arch: the same loop with a fixed arch
    and one pass a step. Returns the last epoch's record; --eval evaluates a checkpoint instead."""
    if args.eval:
        return infra.evaluate_checkpoint(args)
    resolve_recipe(args)
    d = infra.setup_distributed(args.device)
    seed_everything(args.seed)
    if args.amp and d.device.type == "cpu":
        d.log("note: bf16 autocast on this CPU may be slower than fp32")
    with infra.run_folder(args.out, d):         # one live run per output folder
        run = build_run(args, d)                 # space, data, model, sampler, optimiser; resumed from --out
        t_start, step0 = time.time(), run.step
        while run.step < run.total_steps:
            epoch = run.step // run.steps_per_epoch
            train_epoch(run, epoch, t_start, step0)  # each step: 1. draw sub-networks, 2. train their passes
            run.record = end_of_epoch(run, epoch)    # 3. evaluate the reported archs, log the epoch
            run.save()
    d.log(f"done: {run.step} steps in {infra.fmt_time(time.time() - t_start)}; checkpoint {run.path}")
    return run.record


# -----------------------------------------------------------------------------
# 4. Recipes and flags


# The super-transformer's training recipe. "v1" is the paper's first version (one sampled network
# per step, bilateral sharing with a loss per side, binomial depth at the learned identity
# probability) with this project's earlier DeiT-like augmentation; "v1-code" is v1 as the authors'
# public code trains it (one loss on the summed left and right logits; their supernet
# regularisation: CutMix 1.0, label smoothing 0.1, random erasing 0.25, no RandAugment, no drop
# path). "v2" adds the second version's identity shifting (our reading: identities moved behind
# the real blocks while training) and weak augmentation. "v2+strat", the default (beyond the
# paper), is v2 with stratified sampling: the (patch size, depth) cells of the window drawn alike,
# so shallow and deep archs and both patch sizes share the steps. "fair" (beyond the paper) also
# leaves the identities anywhere while training (shifted only when scoring and searching), so every
# block position is trained alike. Both rank the window reference better than v2 (4 seeds); fair's
# weights learn less than v2's, v2+strat's about as much (RESULTS.md: ranking and learning at full
# size, at 1,300 images and at half length). Beyond the paper, opt-in: cyclic sharing, the sandwich,
# distillation, the cell-based samplers. Explicit flags override the recipe.
RECIPE_KEYS = ("sharing", "bilateral_loss", "sandwich", "distill", "identity_shift", "sampling")
V1 = {"sharing": "bilateral", "bilateral_loss": "two", "sandwich": None, "distill": False, "identity_shift": "off",
      "sampling": "binomial"}
RECIPES = {
    "v1": {**V1, "randaug": 9, "reprob": 0.25},
    "v1-code": {**V1, "bilateral_loss": "summed", "cutmix": 1.0, "randaug": 0, "reprob": 0.25},
    "v2": {**V1, "identity_shift": "train"},
    "fair": {**V1, "identity_shift": "search", "sampling": "stratified"},
    "v2+strat": {**V1, "identity_shift": "train", "sampling": "stratified"},
}
DEFAULT_RECIPE = "v2+strat"
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
            raise UserError("--distill needs the sandwich (--sandwich N): "
                            "the largest network of each step is the teacher")
    return args


def sandwich_arg(text):
    """--sandwich: 'off' or the number N >= 0 of drawn networks beside the largest and the smallest."""
    return None if text == "off" else number_arg(int, 0)(text)


def default_text(key):
    """How --help states a flag's default in each mode."""
    sup = {name: RECIPES[name].get(key, REGULARISATION["super"].get(key)) for name in RECIPES}
    sup = f"{sup[DEFAULT_RECIPE]}" + "".join(f", --recipe {n}: {v}" for n, v in sup.items()
                                             if n != DEFAULT_RECIPE and v != sup[DEFAULT_RECIPE])
    return (f"default: {sup}" if key in RECIPE_KEYS
            else f"default: super-transformer {sup}; retrain {REGULARISATION['retrain'][key]}")


NAT, POS, NONNEG = number_arg(int, 0), number_arg(int, 1), number_arg(float, 0)


def get_parser():
    ap = infra.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_flags in (run_flags, sampling_flags, recipe_flags, training_flags):
        add_flags(ap)
    return ap


def run_flags(ap):
    nat, pos = NAT, POS
    g = ap.add_argument_group("run")
    g.add_argument("--space", default=None, choices=sorted(vitas.PRESETS),
                   help="search-space preset (default tiny; with --init-from, the checkpoint's)")
    g.add_argument("--out", default="runs/super", help="output folder: checkpoint.pt, log.jsonl (default runs/super)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    g.add_argument("--seed", type=nat, default=0,
                   help="initialisation, data order, sampled archs (and the data, unless --data-seed)")
    g.add_argument("--data-seed", type=nat, default=None,
                   help="seed of the synthetic data and of the held-out split (default: --seed); fix it to train the "
                        "same network on the same data with other --seed values")
    g.add_argument("--epochs", type=pos, default=15)
    g.add_argument("--save-every", type=nat, default=0, help="also checkpoint every N steps (0: each epoch only)")
    g.add_argument("--log-every", type=pos, default=20, help="progress line every N steps")
    g = ap.add_argument_group("data")
    g.add_argument("--data", default="synthetic",
                   help="synthetic | cifar10 | cifar100 | ImageFolder root with train/ and val/")
    g.add_argument("--data-root", default="data", help="where cifar10/cifar100 live (default ./data)")
    g.add_argument("--download", action="store_true", help="download cifar10/cifar100 into --data-root")
    g.add_argument("--holdout", type=infra.holdout_arg, default=0.1,
                   help="training images kept out for the search to score archs on: a fraction below 1 or a count "
                        "(default 0.1: 600 of the 6,000 synthetic images, so one image is 0.17 points)")
    g.add_argument("--synthetic-size", type=number_arg(int, 10), default=6000,
                   help="synthetic training images (val: a fifth, at least 100)")
    g.add_argument("--synthetic-classes", type=number_arg(int, 2), default=10)
    g.add_argument("--workers", type=nat, default=0, help="data-loader workers per process")
    g.add_argument("--eval-batch-size", type=pos, default=256)
    g.add_argument("--eval-limit", type=pos, default=None, help="evaluate on the first N val images only")


def sampling_flags(ap):
    nat, nonneg = NAT, NONNEG
    g = ap.add_argument_group("super-transformer sampling and recipe")
    g.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
                   help="v1: the paper's first version's method: one sampled network per step, bilateral sharing "
                        "with a loss per side, binomial depth, and DeiT-like augmentation (add --mixup 0.8 --cutmix "
                        "1.0 for the published super-transformer augmentation). v1-code: v1 as the authors' code "
                        "trains it (one loss on the summed left + right logits; CutMix 1.0, erasing 0.25, no "
                        "RandAugment). v2 (beyond v1): v1 plus the second version's identity shifting while training "
                        "and weak augmentation. v2+strat (default; beyond the paper): v2 with stratified sampling "
                        "(the window's patch-size and depth cells drawn alike): it ranks archs better than v2 and its "
                        "weights learn about as well. fair (beyond the paper): stratified sampling, identities "
                        "shifted only when searching, so every block position and patch size is trained alike; it "
                        "ranks as v2+strat does and its weights learn less (RESULTS.md: 4 supernet seeds, and at "
                        "1,300 images). Cyclic sharing, the sandwich, "
                        "distillation and the other samplers (beyond v1) are the flags below.")
    g.add_argument("--uniform-epochs", type=nat, default=2,
                   help="epochs of uniform sampling before the learned identity probability")
    g.add_argument("--patch-sizes", type=number_arg(int, 1), nargs="+", default=None, metavar="P",
                   help="train only these patch sizes of the space (default: all). One super-transformer per patch "
                        "size, each on its share of the steps, splits the space as few-shot NAS does: no block "
                        "weights shared between patch sizes (beyond the paper)")
    g.add_argument("--flops-min", type=infra.count_arg, default=None,
                   help="FLOPs (MACs) window the learned identity probability aims at, e.g. 0.9G")
    g.add_argument("--flops-max", type=infra.count_arg, default=None,
                   help="e.g. 1.1G; without a window sampling stays uniform")
    g.add_argument("--throughput-min", type=number_arg(float, 0, lo_open=True), default=None, metavar="IMG/S",
                   help="instead of a FLOPs window: aim sampling at networks doing at least this many images/s on this "
                        "device (exported ViT, eval); a latency model is fitted to archs measured at start-up")
    g.add_argument("--throughput-max", type=number_arg(float, 0, lo_open=True), default=None, metavar="IMG/S",
                   help="upper end of the throughput window")
    infra.throughput_measure_flags(g)
    g.add_argument("--calibration-seconds", type=nonneg, default=30,
                   help="about how long the throughput calibration measures "
                        "(at least 12 archs, at most 64; default 30)")


def recipe_flags(ap):
    g = ap.add_argument_group("super-transformer recipe: flags that override --recipe")
    g.add_argument("--sharing", default=None, choices=sorted(vitas.SHARINGS),
                   help="left: the first channels; bilateral (v1): left and right slices each step, each with its own "
                        "loss; cyclic (v2, one pass a step): embedding channels as a ring, each width its own window. "
                        + default_text("sharing"))
    g.add_argument("--bilateral-loss", default=None, choices=["two", "summed"],
                   help="with bilateral sharing: two (a loss per side, gradients summed: the paper's text) or summed "
                        "(one loss on the summed left + right logits, as the authors' code does). "
                        + default_text("bilateral_loss"))
    g.add_argument("--sandwich", type=sandwich_arg, default=None, metavar="N|off",
                   help="beyond v1 (BigNAS): each step trains the largest and the smallest network (inside the FLOPs "
                        "window) and N drawn ones, gradients summed before one optimizer step. "
                        + default_text("sandwich"))
    g.add_argument("--distill", default=None, action=argparse.BooleanOptionalAction,
                   help="beyond v1 (in-place distillation): the sandwich's other networks learn from the largest one's "
                        "soft predictions. " + default_text("distill"))
    g.add_argument("--identity-shift", default=None, choices=IDENTITY_SHIFTS,
                   help="v2's remedy for identity placements that give the same network. train (v2, our reading): "
                        "every drawn network has its identity blocks moved behind its real ones, so one network is one "
                        "path; block k then trains only when the depth is at least k. search (beyond the paper): "
                        "training draws identities anywhere (every block position trained alike), scoring and "
                        "searching move them behind. off (v1): identities anywhere, also when searching. "
                        + default_text("identity_shift"))
    g.add_argument("--sampling", default=None, choices=SAMPLINGS,
                   help="how the learned phase draws a network. binomial (the paper's): each block identity with the "
                        "learned identity probability, so depth is binomial and deep networks rare. depth-balanced "
                        "(beyond the paper): the depth uniform among the depths the FLOPs window admits. stratified "
                        "(beyond the paper): a (patch size, depth) cell of the window uniformly, so every patch size "
                        "and depth is trained alike. Both place the real blocks at random positions and draw widths "
                        "uniformly inside the window. "
                        + default_text("sampling"))


def training_flags(ap):
    pos, nonneg = POS, NONNEG
    g = ap.add_argument_group("retrain")
    g.add_argument("--arch", default=None, help="arch JSON (search.py's best_arch.json): retrain it as a plain ViT")
    g.add_argument("--init-from", default=None, help="super-transformer checkpoint to inherit the arch's weights from")
    g = ap.add_argument_group("evaluate")
    g.add_argument("--eval", default=None, metavar="CKPT",
                   help="evaluate a checkpoint without training: top-1/top-5/loss on val and on the held-out split, "
                        "written to eval.json beside it (a super-transformer checkpoint needs --arch: eval-ARCH.json)")
    g = ap.add_argument_group("optimisation, augmentation, regularisation")
    g.add_argument("--batch-size", type=pos, default=64, help="per process")
    g.add_argument("--lr", type=number_arg(float, 0, lo_open=True), default=2e-3)
    g.add_argument("--min-lr", type=nonneg, default=1e-5, help="end of the cosine (at most --lr)")
    g.add_argument("--weight-decay", type=nonneg, default=0.05)
    g.add_argument("--warmup-epochs", type=nonneg, default=1)
    g.add_argument("--smoothing", type=number_arg(float, 0, 1, hi_open=True), default=None,
                   help="label smoothing; " + default_text("smoothing"))
    g.add_argument("--mixup", type=nonneg, default=None,
                   help="MixUp alpha (DeiT: 0.8; 0: off); " + default_text("mixup"))
    g.add_argument("--cutmix", type=nonneg, default=None,
                   help="CutMix alpha (DeiT: 1.0; 0: off); " + default_text("cutmix"))
    g.add_argument("--randaug", type=number_arg(int, 0, 30), default=None,
                   help="RandAugment magnitude on real data (0: off); " + default_text("randaug"))
    g.add_argument("--reprob", type=number_arg(float, 0, 1), default=None,
                   help="random-erasing probability on real data; " + default_text("reprob"))
    g.add_argument("--drop-path", type=number_arg(float, 0, 1, hi_open=True), default=None,
                   help="stochastic depth (DeiT retrain: 0.1); " + default_text("drop_path"))
    g.add_argument("--clip-grad", type=nonneg, default=5.0, help="gradient-norm clip (0: off)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (for CUDA; slower on most CPUs)")


def parse_args(argv=None):
    ap = get_parser()
    args = ap.parse_args(argv)
    if args.min_lr > args.lr:
        ap.error(f"argument --min-lr: {args.min_lr:g} exceeds --lr {args.lr:g}; "
                 f"expected at most the peak learning rate")
    infra.check_flops_window(ap, args)
    throughput = args.throughput_min is not None or args.throughput_max is not None
    if throughput and (args.flops_min is not None or args.flops_max is not None):
        ap.error("give a FLOPs window (--flops-min/--flops-max) or a throughput window "
                 "(--throughput-min/--throughput-max), not both")
    if (throughput and args.throughput_min is not None and args.throughput_max is not None
            and args.throughput_min > args.throughput_max):
        ap.error(f"the throughput window is empty: --throughput-min {args.throughput_min:g} > "
                 f"--throughput-max {args.throughput_max:g}")
    return args


def main(argv=None):
    infra.run_cli(train, parse_args(argv))


if __name__ == "__main__":
    main()
