"""
Train the ViTAS super-transformer (arXiv 2106.13700, section 3), or retrain one found architecture.

    python train.py --epochs 3 --flops-min 2M --flops-max 4M             # synthetic data, tiny space
    torchrun --standalone --nproc_per_node=2 train.py --out runs/super --flops-min 2M --flops-max 4M
    python train.py --arch runs/search/best_arch.json --out runs/retrain  # retrain a found arch from scratch
    python train.py --eval runs/retrain/checkpoint.pt                      # evaluate, no training
    python train.py --export runs/retrain/checkpoint.pt    # a ViT to ship: vitas.load("runs/retrain/export")

The file follows the paper: (1) sampling: each step draws a sub-network, uniformly for
--uniform-epochs, then with the learned identity probability that puts it in the FLOPs window;
(2) the step: bilateral sharing trains the drawn network on its left and on its right channels;
(3) the loop, also a retrain's (one fixed arch, one pass a step); (4) the recipes, each described
once in RECIPE_NOTES (v1 is the paper's first version; the rest say what goes beyond it);
(5) an arch trained alone, the search's reference. Every rank draws the same archs from a
generator seeded by (seed, step); re-running the same command resumes from --out/checkpoint.pt.
Flags: cli.py; processes, checkpoints and the run's record: runs.py; data, evaluation: data.py.
"""
import argparse
import dataclasses
import os
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import cli
import data
import record
import runs
import vitas
from cli import UserError

# -----------------------------------------------------------------------------
# 1. Sampling (section 3): uniform, then the learned identity probability


SAMPLINGS = ("binomial", "depth-balanced", "stratified")
IDENTITY_SHIFTS = ("off", "train", "search")


class ArchSampler:
    """The sub-networks of each training step.

    Uniform phase for the first `uniform_epochs` (every choice uniform, each block identity with
    probability 1/2), then the learned phase that keeps sampled networks in the FLOPs window
    (out-of-window draws are redrawn, bounded). `sampling` (SAMPLINGS; --sampling's help) is how
    the learned phase draws: binomial, the paper's, each block identity with the learned identity
    probability (vitas.solve_identity_prob); beyond the paper, depth-balanced or stratified, a
    depth or a (patch size, depth) cell of the window uniformly (the cell-based samplers draw
    every cell of the space in the uniform phase). With `sandwich` N (beyond v1) a step trains the
    largest and the smallest network (record.reported_archs) and N drawn ones; with `identity_shift` (v2)
    every draw has its identities moved behind its real blocks. The archs of global step s come
    from a generator seeded by (seed, s)."""

    def __init__(self, space, seed, uniform_epochs, window=None, identity_prob=None, max_tries=100, sandwich=None,
                 identity_shift=False, cost=None, sampling="binomial"):
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.space, self.seed, self.uniform_epochs, self.max_tries = space, seed, uniform_epochs, max_tries
        self.sandwich, self.identity_shift = sandwich, identity_shift
        self.mode, self.arch = "super", None   # what the run's checkpoint is (a retrain's: FixedArch)
        self.throughput_calibration = None   # a throughput window's (record.calibrate_throughput)
        # the window (lo, hi; None: open) is in FLOPs, or in the units of `cost` (a LatencyModel: seconds per image)
        self.cost = cost or (lambda a: vitas.flops(a, space))
        lo, hi = window or (None, None)
        self.window = None if lo is None and hi is None else (lo or 0, hi or self.cost(space.max_arch()))
        self.identity_prob = identity_prob
        with cli.users_to_fix():   # an empty or unreachable window, or one no uniform arch reaches
            if self.window is not None and identity_prob is None:
                self.identity_prob = vitas.solve_identity_prob(space, *self.window, cost=cost,
                                                               what="FLOPs" if cost is None else "seconds-per-image")
            self.reports = record.reported_archs(space, self.window, cost)
        self.ends = [self.reports["largest"], self.reports["smallest"]]
        self.uniform_cells = self.cells = None
        self.rare = set()   # window cells drawn straight inside the window (window_cells)
        if sampling != "binomial":
            self.uniform_cells = self.cells = vitas.all_cells(space, by_patch=sampling == "stratified")
            if self.window is not None:
                self.costs = vitas.block_costs(space, cost)
                self.cells, self.rare = vitas.window_cells(space, self.inside, self.window, self.costs,
                                                           sampling == "stratified", seed)

    def state_dict(self):
        """What a checkpoint keeps of the sampler, so a resumed run draws as the uninterrupted one."""
        return {"identity_prob": self.identity_prob, "throughput_calibration": self.throughput_calibration}

    def load_state_dict(self, ck):
        self.identity_prob = ck["identity_prob"]

    def improved(self, record):
        """A super-transformer keeps no best checkpoint (FixedArch.improved)."""
        return False

    def statistics(self, sums):
        """The epoch record's account of the sampler: the reported archs and who was trained."""
        return {"reported": {k: {"arch": a.to_dict(), "flops": vitas.flops(a, self.space)}
                             for k, a in self.reports.items()},
                "sampled": record.sampler_statistics(sums)}

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
        cell = None
        if self.cells is not None:   # the cell first, once: redraws below keep it
            cells = self.cells if learned else self.uniform_cells
            cell = cells[rng.integers(len(cells))]
        tries = 1 if not learned or cell in self.rare else self.max_tries
        for _ in range(tries):   # bounded resampling; the last draw stands if none fits
            if self.cells is None:   # each block identity with the identity probability (1/2 when uniform)
                arch = self.space.sample(rng, self.identity_prob if learned else None)
            else:
                arch = vitas.draw_in_cell(self.space, rng, cell)
            if not learned or self.inside(arch):
                break
        if learned and cell is not None and not self.inside(arch):
            # a rare cell, or no redraw fitted: the cell's arch drawn inside the window (None: a gap of the widths)
            inside = (vitas.draw_in_window(self.space, rng, cell, *self.window, self.costs)
                      for _ in range(self.max_tries))
            arch = next((a for a in inside if a is not None), arch)
        return vitas.shift_identities(arch) if self.identity_shift else arch

    def __call__(self, step, epoch):
        """The archs step `step` trains: [drawn], or [largest, smallest, N drawn] with the sandwich."""
        rng = np.random.default_rng([self.seed, 0, step])
        if self.sandwich is None:
            return [self.draw(rng, self.learned(epoch))]
        return self.ends + [self.draw(rng, self.learned(epoch)) for _ in range(self.sandwich)]


class FixedArch:
    """A retrain's sampler: the one arch it trains, every step (its plain ViT takes no arch)."""

    def __init__(self, arch):
        self.mode, self.arch, self.reports = "retrain", arch, {"model": arch}
        self.best = None   # the best val top-1 of an epoch so far (its checkpoint: best.pt)

    def __call__(self, step, epoch):
        return [self.arch]

    def prob(self, epoch):
        return None

    def improved(self, record):
        """Whether this epoch's val top-1 beats every earlier epoch's (then best.pt becomes its checkpoint)."""
        top1 = record["val"]["model"]["top1"]
        better = self.best is None or top1 > self.best
        self.best = top1 if better else self.best
        return better

    def state_dict(self):
        return {"best_top1": self.best}

    def load_state_dict(self, ck):
        self.best = ck.get("best_top1")

    def statistics(self, sums):
        return {}


def make_sampler(args, space, d, calibration=None):
    """The super-transformer's ArchSampler, its FLOPs (or throughput) window calibrated and
    checked; `calibration`: a resumed run's throughput calibration, reused as it is."""
    cost, window, calibration = record.throughput_window(args, space, d, calibration)
    sampler = ArchSampler(space, args.seed, args.uniform_epochs, window, sandwich=args.sandwich,
                          identity_shift=args.identity_shift == "train", cost=cost, sampling=args.sampling)
    sampler.throughput_calibration = calibration
    if sampler.window is not None:
        what = "FLOPs window" if cost is None else "throughput window (predicted)"
        inside = record.describe_window(sampler, what, d)
        if inside < 0.5:
            raise UserError(f"only {100 * inside:.0f}% of sampled networks reach the {what}; widen it")
        if cost is not None and "inside" not in calibration:
            calibration["inside"] = record.check_throughput_window(sampler, calibration, window, d)
    record.describe_reported(sampler, args.sandwich is not None, d)
    return sampler


# -----------------------------------------------------------------------------
# 2. The step: bilateral sharing


def distill_loss(logits, teacher_logits):
    """Cross-entropy against the teacher's soft predictions; the teacher gets no gradient."""
    return -(F.softmax(teacher_logits.detach().float(), dim=-1) * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def train_step(ddp, x, y, archs, sides, args, d, scale=1.0, sync=True):
    """Forward and backward of one micro-batch's passes into summed gradients. Bilateral sharing
    (section 3) is `sides` = ("left", "right"): every drawn arch is trained on its first and on its
    last channels, so every channel is trained about equally often; each slice with its own loss, or
    (--bilateral-loss summed, the authors' code) one loss on the sum of both slices' logits. A
    retrain has one pass, side None (the plain ViT). The first arch (the largest with the sandwich)
    learns from the labels; with --distill the others learn from its soft predictions on the same
    side. Each loss is backpropagated times `scale` (1/K over K micro-batches: their mean is one
    batch K times larger); DDP all-reduces on the last backward only, and only where `sync` (the
    optimizer step's last micro-batch). Returns this process's summed loss and the number of losses."""
    if args.bilateral_loss == "summed" and len(sides) > 1:   # the authors' code: one loss on left + right logits
        losses = [(i, [(side, a) for side in sides]) for i, a in enumerate(archs)]
    else:                                                    # a loss per pass
        losses = [(i, [(side, a)]) for side in sides for i, a in enumerate(archs)]
    loss_sum, teacher = torch.zeros((), device=d.device), None
    for n, (i, passes) in enumerate(losses):
        last = sync and n == len(losses) - 1
        with ddp.no_sync() if d.world > 1 and not last else nullcontext():
            with runs.amp_context(d.device, args.amp):
                outs = [ddp(x) if side is None else ddp(x, a, side) for side, a in passes]
                out = sum(outs[1:], outs[0])
                if i > 0 and args.distill:
                    loss = distill_loss(out, teacher)
                else:
                    loss = F.cross_entropy(out.float(), y, label_smoothing=args.smoothing)
                    teacher = out.detach()
            (loss * scale if scale != 1.0 else loss).backward()
        loss_sum += loss.detach()
    return loss_sum, len(losses)


def optimizer_step(run, batches, archs):
    """One optimizer step on this step's archs over its micro-batches `batches` [(x, y)] (train_step's
    passes on each, gradients averaged over them); the mean loss, all-reduced (every rank then takes
    the same decisions)."""
    run.optimizer.zero_grad(set_to_none=True)
    k, loss_sum, passes = len(batches), 0.0, 0
    for j, (x, y) in enumerate(batches):
        loss, passes = train_step(run.ddp, x, y, archs, run.sides, run.args, run.d, 1.0 / k, sync=j == k - 1)
        loss_sum = loss_sum + loss
    loss_all = run.d.all_reduce(loss_sum) / run.d.world
    if not torch.isfinite(loss_all):
        raise UserError(f"non-finite loss at step {run.step} (archs {', '.join(map(str, archs))}); the last good "
                        f"checkpoint in {run.path} is intact — lower --lr or enable --clip-grad")
    if run.args.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.args.clip_grad)
    run.optimizer.step()
    run.schedule.step()
    run.step += 1
    return loss_all.item() / (passes * k)


# -----------------------------------------------------------------------------
# 3. The loop


def run_parts(args, space, d, init, resumed):
    """What a super-transformer run and a retrain differ in, decided here once: the model, the sampler
    of each step's archs, the sides each is trained on. The super-transformer: an ArchSampler, the
    --sharing sides. A retrain: the plain ViT of --arch (inheriting --init-from's weights), one pass."""
    if args.arch is None:
        model = vitas.SuperTransformer(space, args.drop_path).to(d.device)
        return model, make_sampler(args, space, d, resumed and resumed.get("throughput_calibration")), \
            vitas.SHARINGS[args.sharing]
    arch = runs.load_arch_file(args.arch, space)
    if init is not None:
        supernet, sides = runs.supernet_of(init)
        d.log(f"retrain {arch} from the weights inherited from {args.init_from} ({sides[0]} slice)")
        model = vitas.export(supernet, arch, sides[0], args.drop_path)
    else:
        d.log(f"retrain {arch} from scratch")
        model = vitas.ViT(arch, space, args.drop_path)
    d.log(f"  {vitas.flops(arch, space) / 1e6:.2f} MFLOPs, {vitas.params(arch, space) / 1e6:.3f} M params")
    return model.to(d.device), FixedArch(arch), (None,)


def build_run(args, d):
    """Space, data, model (DDP-wrapped where distributed), sampler, optimiser and schedule; resumed
    from --out where a checkpoint is there."""
    init = runs.load_checkpoint(args.init_from, "--init-from") if args.init_from else None
    own = os.path.join(args.out, "checkpoint.pt")
    resumed = runs.load_checkpoint(own) if os.path.exists(own) else None   # read once: resume, calibration
    space = cli.run_space(args, init, resumed, d.log)
    datasets = data.build_datasets(args, space.image_size)
    if space.num_classes != datasets.num_classes:   # the data's class count wins
        d.log(f"data has {datasets.num_classes} classes, the search space {space.num_classes}: "
              f"using {datasets.num_classes}")
        space = dataclasses.replace(space, num_classes=datasets.num_classes)
    model, sampler, sides = run_parts(args, space, d, init, resumed)
    runs.seed_rank(args.seed, d.rank)                # initialised alike; from here each rank draws its own
    ddp = runs.distributed(model, d, slices=sampler.mode == "super")
    train_loader, steps_per_epoch = data.train_loader(datasets.train, args, d)
    optimizer, schedule = runs.optimiser(model, args, steps_per_epoch)
    val_loader = data.eval_loader(datasets.val, args.eval_batch_size, d, args.workers, limit=args.eval_limit)
    run = runs.Run(args, d, space, model, ddp, optimizer, schedule, sampler, sides, datasets, train_loader,
                   val_loader, data.mix_transform(args, space.num_classes), steps_per_epoch)
    os.makedirs(args.out, exist_ok=True)
    if resumed is not None and sampler.mode == "super":
        cli.refuse_other_recipe(resumed, args, run.path, RECIPE_BOOK)
    run.resume(resumed)
    record.start_log(run, resumed is not None)
    record.describe(run, RECIPE_KEYS)
    return run


def train_epoch(run, epoch, t_start, step0):
    """The steps of `epoch` from where the run stands (a resumed epoch skips what it trained)."""
    args, d = run.args, run.d
    skip = run.step - epoch * run.steps_per_epoch
    if skip == 0 or run.sums is None:   # a resumed epoch keeps the sums of its first part
        run.sums = record.epoch_sums(run.space)
    run.seen, run.t_epoch, run.waited, run.ready = 0, time.time(), 0.0, time.time()
    run.model.train()
    loader = iter(data.epoch_loader(run.train_loader, epoch, skip * args.accum_steps))
    for micro in zip(*[loader] * args.accum_steps):         # a step's K micro-batches (an incomplete last: left)
        run.waited += time.time() - run.ready                # the time the step waited for the loader
        batches = [(x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)) for x, y in micro]
        if run.mix is not None:
            batches = [run.mix(x, y) for x, y in batches]
        archs = run.sampler(run.step, epoch)                 # 1. this step's sub-networks
        loss = optimizer_step(run, batches, archs)           # 2. their passes (bilateral), one optimizer step
        flops = float(np.mean([vitas.flops(a, run.space) for a in archs]))
        run.seen += sum(len(y) for _, y in batches) * d.world
        record.add_step(run.sums, loss, flops, archs, run.space)
        if d.main and (run.step % args.log_every == 0 or run.step == run.total_steps):
            record.progress(run, epoch, flops, t_start, step0)
        if args.save_every and run.step % args.save_every == 0 and run.step % run.steps_per_epoch:
            run.save()
        run.ready = time.time()


def end_of_epoch(run, epoch):
    """Evaluate the reported archs (a retrain: its model) on val; the epoch's record, appended to
    log.jsonl (one JSON object per epoch) and drawn in curves.png (from the second epoch on)."""
    evals = {k: data.evaluate(run.model, run.val_loader, run.d, a, run.sides[0], run.args.amp)
             for k, a in run.sampler.reports.items()}
    epoch_record = record.epoch_record(run, epoch, evals)
    run.d.log("  val " + "  ".join(f"{k} top-1 {v['top1']:.1f}% top-5 {v['top5']:.1f}%" for k, v in evals.items()))
    record.write_record(run, epoch_record)
    return epoch_record


def train(args):
    """Train the super-transformer, or (--arch) retrain one arch: the same loop with a fixed arch
    and one pass a step. Returns the last epoch's record; --eval evaluates a checkpoint instead."""
    if args.eval or args.export:
        return data.evaluate_checkpoint(args) if args.eval else data.export_checkpoint(args)
    resolve_recipe(args)
    d = runs.setup_distributed(args.device, args.timeout)
    runs.seed_everything(args.seed)
    if args.amp and d.device.type == "cpu":
        d.log("note: bf16 autocast on this CPU may be slower than fp32")
    with runs.run_folder(args.out, d), runs.collectives_named(d) as at:     # one live run per output folder
        run = at.run = build_run(args, d)        # space, data, model, sampler, optimiser; resumed from --out
        t_start, step0 = time.time(), run.step
        while run.step < run.total_steps:
            epoch = run.step // run.steps_per_epoch
            train_epoch(run, epoch, t_start, step0)  # each step: 1. draw sub-networks, 2. train their passes
            run.record = end_of_epoch(run, epoch)    # 3. evaluate the reported archs, log the epoch
            improved = run.sampler.improved(run.record)
            run.save()
            if improved:                             # a retrain's best epoch: best.pt beside the last
                run.save(os.path.join(args.out, "best.pt"))
    d.log(f"done: {run.step} steps in {cli.fmt_time(time.time() - t_start)}; checkpoint {run.path}")
    return run.record


# -----------------------------------------------------------------------------
# 4. Recipes: the super-transformer's training method by name (--recipe); explicit flags override.
# Each recipe is described once, in RECIPE_NOTES (--help prints them; the README points here).

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
RECIPE_NOTES = {
    "v1": "the paper's first version's method: one sampled network a step, bilateral sharing with a loss per "
          "side, binomial depth at the learned identity probability, DeiT-like augmentation (add --mixup 0.8 "
          "--cutmix 1.0 for its published augmentation)",
    "v1-code": "v1 as the authors' code trains it: one loss on the summed left + right logits; CutMix 1.0, "
               "random erasing 0.25, no RandAugment",
    "v2": "v1 plus the second version's identity shifting while training (our reading: identities moved behind "
          "the real blocks) and weak augmentation",
    "v2+strat": "beyond the paper: v2 with stratified sampling, where the learned phase draws a (patch size, "
                "depth) cell of the window uniformly instead of using the learned identity probability",
    "fair": "beyond the paper: v2+strat with the identities left anywhere while training (shifted only when "
            "scoring and searching), so every block position is trained alike",
}
DEFAULT_RECIPE = "v2+strat"
# Augmentation and regularisation where the recipe sets none: weak while training the
# super-transformer (v2), DeiT-like when retraining a found architecture.
REGULARISATION = {
    "super": {"smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0, "randaug": 0, "reprob": 0.0, "drop_path": 0.0},
    "retrain": {"smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0, "randaug": 9, "reprob": 0.25, "drop_path": 0.0},
}
RECIPE_BOOK = argparse.Namespace(recipes=RECIPES, notes=RECIPE_NOTES, default=DEFAULT_RECIPE, keys=RECIPE_KEYS,
                                 regularisation=REGULARISATION, samplings=SAMPLINGS, identity_shifts=IDENTITY_SHIFTS)


def resolve_recipe(args):
    """Fill the flags left unset from --recipe and the mode's regularisation (cli.resolve_recipe)."""
    return cli.resolve_recipe(args, RECIPE_BOOK)


def get_parser():
    return cli.train_parser(__doc__, RECIPE_BOOK)


def parse_args(argv=None):
    return cli.parse_train_args(get_parser(), argv)


# -----------------------------------------------------------------------------
# 5. An arch trained alone: the rank check's reference and the search's retrain


def train_alone(arch, out, argv, d):
    """Train `arch` alone with train.py's retrain mode into `out`; its final val {"top1", "top5",
    "loss", "prob", "n"}. The result is kept in out/result.json: a finished training is never redone."""
    result_path, arch_path = os.path.join(out, "result.json"), os.path.join(out, "arch.json")
    result = runs.read_if_every_rank_sees(result_path, d)
    if result is not None and result["arch"] == arch.to_dict() and result["argv"] == argv:
        return result["val"]
    if d.main:
        os.makedirs(out, exist_ok=True)
        runs.write_json(arch_path, arch.to_dict())
    if d.world > 1:
        dist.barrier()
    d.log(f"training {arch} alone for {argv[1]} epochs into {out}")
    val = train(parse_args(["--arch", arch_path, "--out", out, *argv]))["val"]["model"]
    if d.main:
        runs.write_json(result_path, {"arch": arch.to_dict(), "argv": argv, "val": val,
                                      "provenance": runs.provenance()})
    return val


def main(argv=None):
    runs.run_command(train, parse_args(argv))


if __name__ == "__main__":
    main()
