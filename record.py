"""
What a run measures and reports. Measured throughput (beyond the paper): images/s of an arch, a
cache of them, a latency model fitted on rank 0 that a throughput window aims sampling with. The
archs a run reports, train.py's progress lines, its set-up, the epoch record in log.jsonl with the
sampler statistics (who the sampler trains, who it starves), a resumed run's log kept in step
with its checkpoint; and the pictures: curves.png (loss, top-1 of every reported arch, the
identity probability and the sampler statistics, per epoch) and search.py's pareto.png (every
evaluated candidate, the Pareto front, the best arch, retrained accuracies, random search's).

matplotlib is imported here, lazily, with the Agg backend (no display needed). Where it is missing
a run prints one note and goes on: pictures never fail a run.
"""
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import data
import runs
import vitas
from cli import UserError, fmt_time
from vitas import Arch, Block, ViT, flops, params

# -----------------------------------------------------------------------------
# Measured throughput, beyond the paper (which budgets by FLOPs): images/s of an arch on a device, a
# cache of those measurements, and a latency model that adds up over blocks as FLOPs do, so that the
# learned identity probability (vitas.solve_identity_prob) can aim at a throughput window


def measure_throughput(arch, space, device="cpu", batch=16, amp=False, warmup=2, repeats=10, max_seconds=2.0):
    """Images/s of the plain ViT of `arch` (what a found arch is deployed as): eval mode, no grad,
    a fixed random input; warm-up calls, then the median of timed calls (at least 3, at most
    `repeats`, stopping after max_seconds), CUDA synchronised; bf16 autocast with amp (CUDA)."""
    device = torch.device(device)
    model = ViT(arch, space).to(device).eval()
    x = torch.randn(batch, space.in_chans, space.image_size, space.image_size,
                    generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for _ in range(warmup):
            model(x)
        sync()
        start = time.perf_counter()
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < max_seconds):
            t = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


class ThroughputMeter:
    """measure_throughput with a cache keyed by (arch, device, batch, amp): no arch is measured
    twice. `measured` counts the real measurements; state_dict() keeps the cache for a resume."""

    def __init__(self, space, device="cpu", batch=16, amp=False, **measure_kw):
        self.space, self.device, self.batch, self.amp, self.measure_kw = space, str(device), batch, amp, measure_kw
        self.cache, self.measured = {}, 0

    def key(self, arch):
        return (arch, self.device, self.batch, self.amp)

    def __call__(self, arch):
        if self.key(arch) not in self.cache:
            self.cache[self.key(arch)] = measure_throughput(arch, self.space, self.device, self.batch, self.amp,
                                                            **self.measure_kw)
            self.measured += 1
        return self.cache[self.key(arch)]

    def state_dict(self):
        return [[a.to_dict(), dev, b, amp, v] for (a, dev, b, amp), v in self.cache.items()]

    def load_state_dict(self, state):
        self.cache.update({(Arch.from_dict(a), dev, b, amp): v for a, dev, b, amp, v in state})


class LatencyModel:
    """Seconds per image of an arch on one device, fitted to measurements, as a sum over blocks
    (so that solve_identity_prob can aim the identity probability at a throughput window):
    t = c0 + c1 T + sum over real blocks (c2 + c3 T + c4 MACs_block + c5 T^2 h) + c6 MACs_rest,
    T = tokens, h = heads. Measuring every sampled arch during training would be too slow."""

    def __init__(self, space, coef=None):
        self.space, self.coef = space, None if coef is None else np.asarray(coef, dtype=float)

    def features(self, arch):
        t = (self.space.image_size // arch.patch_size) ** 2 + 1
        rest = flops(self.space.empty_arch(arch.patch_size, arch.embed_dim), self.space)
        f = np.array([1.0, t, 0.0, 0.0, 0.0, 0.0, rest])
        for b in arch.blocks:
            if b is not None:
                # as in flops()
                macs = (4 * t * arch.embed_dim + 2 * t * t) * b.attn_dim + 2 * t * arch.embed_dim * b.mlp_dim
                f += [0.0, 0.0, 1.0, t, macs, t * t * b.heads, 0.0]
        return f

    def fit(self, archs, images_per_s):
        """Least squares on seconds per image, each measurement weighted by 1/t (relative error)."""
        x = np.stack([self.features(a) for a in archs])
        y = 1.0 / np.asarray(images_per_s, dtype=float)
        w = 1.0 / y
        self.coef = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)[0]
        return self

    def __call__(self, arch):
        """Predicted seconds per image (never below a microsecond)."""
        return max(float(self.features(arch) @ self.coef), 1e-6)


# -----------------------------------------------------------------------------
# Throughput measured on rank 0, the same for every rank


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
        meter = ThroughputMeter(space, d.device, batch, args.throughput_amp, max_seconds=1.0)
        rng = np.random.default_rng([args.seed, 4])
        archs, start = [space.max_arch(), space.empty_arch()], time.time()
        speeds = [meter(a) for a in archs]
        while len(archs) < 12 or (len(archs) < 64 and time.time() - start < args.calibration_seconds):
            archs.append(space.sample(rng, identity_prob=rng.uniform(0, 0.9)))   # every depth, not only p = 1/2
            speeds.append(meter(archs[-1]))
        model = LatencyModel(space).fit(archs, speeds)
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
    lie in the sampler's `window` (seconds per image): how well the fitted latency model steers
    sampling on this device."""
    inside = [None]
    window = (1 / window[1], 1 / window[0])   # seconds per image -> images/s
    if d.main:
        meter = ThroughputMeter(sampler.space, calibration["device"], calibration["batch"], calibration["amp"],
                                max_seconds=1.0)
        rng = np.random.default_rng([sampler.seed, 5])
        inside = [float(np.mean([window[0] <= meter(sampler.draw(rng, learned=True)) <= window[1] for _ in range(16)]))]
    if d.world > 1:
        dist.broadcast_object_list(inside, src=0)
    d.log(f"check: {100 * inside[0]:.0f}% of 16 freshly drawn archs measure inside the throughput window")
    return inside[0]


def throughput_window(args, space, d, calibration=None):
    """The cost and window a throughput window (--throughput-min/--throughput-max, images/s) puts
    sampling in: a LatencyModel of this device and the window in seconds per image, and the
    calibration it was fitted on (`calibration`: a resumed run's, reused as it is). Without one:
    FLOPs, (--flops-min, --flops-max) and None."""
    if args.throughput_min is None and args.throughput_max is None:
        return None, (args.flops_min, args.flops_max), calibration
    calibration = calibration or calibrate_throughput(args, space, d)
    fast, slow = calibration["fastest"], calibration["slowest"]
    tmin, tmax = args.throughput_min or slow[0] / 2, args.throughput_max or fast[0] * 2
    if tmin > fast[0] or tmax < slow[0]:
        raise UserError(f"throughput window [{tmin:g}, {tmax:g}] images/s is out of reach on "
                        f"{calibration['device']}: the fastest measured arch does {fast[0]:,.0f} ({fast[1]}), "
                        f"the slowest {slow[0]:,.0f} ({slow[1]})")
    return LatencyModel(space, calibration["coef"]), (1.0 / tmax, 1.0 / tmin), calibration


# -----------------------------------------------------------------------------
# The archs a run reports


def reported_archs(space, window=None, cost=None):
    """The largest, smallest and a middle arch of the space or of a window: those train.py evaluates
    every epoch, and the sandwich's two ends.

    Without a FLOPs window: the space's largest and smallest (every block present) and the middle
    choice of every dimension. With one, so that they are networks the learned phase trains: of the
    uniform archs (vitas.SearchSpace.uniform_archs) inside the window, those with the most and the fewest
    FLOPs and the one nearest the window's centre (ties: more parameters for the largest, fewer
    otherwise). `cost` (default FLOPs) may be another measure the window is in, e.g. seconds per image."""
    if window is None:
        mid = lambda xs: xs[len(xs) // 2]
        h = mid(space.heads)
        a = mid(space.attn_for[h])
        middle = Arch(mid(space.patch_sizes), mid(space.embed_dims), (Block(h, a, mid(space.mlp_dims)),) * space.depth)
        return {"largest": space.max_arch(), "smallest": space.min_arch(), "middle": middle}
    lo, hi = window
    cost = cost or (lambda a: flops(a, space))
    inside = [(cost(a), params(a, space), a) for a in space.uniform_archs()]
    inside = [r for r in inside if lo <= r[0] <= hi]
    if not inside:
        raise ValueError(f"no uniform arch (every present block alike) lies in the window [{lo:,}, {hi:,}]; widen it")
    centre = (lo + hi) / 2
    return {"largest": max(inside, key=lambda r: r[:2])[2], "smallest": min(inside, key=lambda r: r[:2])[2],
            "middle": min(inside, key=lambda r: (abs(r[0] - centre), r[1]))[2]}


# -----------------------------------------------------------------------------
# The epoch record and the progress lines


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
        runs.write_json(path, sorted(keep, key=lambda r: r[key]), lines=True)


def start_log(run, resumed):
    """log.jsonl as the checkpoint has it: a resumed run keeps the epochs its checkpoint completed,
    each once (an epoch logged just before a crash, and not saved, is trained and logged again); a
    fresh run starts its own, an earlier run's log set aside as log.before-<time>.jsonl."""
    path = os.path.join(run.args.out, "log.jsonl")
    if not run.d.main:
        return
    if resumed:
        keep_log_lines(path, run.step // run.steps_per_epoch)
    elif aside := runs.set_aside(path):
        run.d.log(f"{path} was an earlier run's (no checkpoint beside it): moved to {aside}")


def describe(run, recipe_keys):
    """The run's set-up in two lines: what trains where, with what batch, for how long, on which images."""
    args, d = run.args, run.d
    d.log(f"{'retrain' if run.sampler.mode == 'retrain' else 'super-transformer'} | {d.world} process(es) on "
          f"{d.device} | batch {args.batch_size} per process x {args.accum_steps} micro-batch(es), effective "
          f"{args.batch_size * d.world * args.accum_steps} | "
          f"{run.steps_per_epoch} steps/epoch x {args.epochs} epochs | train {len(run.data.train)}, "
          f"held-out {len(run.data.holdout)}, val {len(run.data.val)} images")
    if run.sampler.mode == "super":
        d.log(f"recipe {args.recipe}: " + ", ".join(f"{k.replace('_', '-')} {getattr(args, k)}" for k in recipe_keys))


def describe_window(sampler, what, d, n=1000):
    """The learned identity probability and how many of n draws land in the window: raw draws at
    the learned p, and as trained (after the sampler's bounded redraws), with their mean FLOPs;
    returns the share as trained."""
    rng = np.random.default_rng([sampler.seed, 2])
    raw = np.mean([sampler.inside(sampler.space.sample(rng, sampler.identity_prob)) for _ in range(n)])
    drawn = [sampler.draw(rng, learned=True) for _ in range(n)]
    inside, mean = np.mean([sampler.inside(a) for a in drawn]), np.mean([vitas.flops(a, sampler.space) for a in drawn])
    d.log(f"learned identity probability {sampler.identity_prob:.3f} for the {what}: {100 * raw:.0f}% of raw "
          f"draws inside, {100 * inside:.0f}% after resampling, mean {mean / 1e6:.2f} MFLOPs")
    return inside


def describe_reported(sampler, sandwich, d):
    """The archs evaluated every epoch (with the sandwich, also its two ends)."""
    d.log("reported each epoch" + (" (and the sandwich's ends)" if sandwich else "") + ": " +
          ", ".join(f"{k} {a} ({vitas.flops(a, sampler.space) / 1e6:.2f} MFLOPs)" for k, a in sampler.reports.items()))


def progress(run, epoch, flops, t_start, step0):
    """The progress line: where the run stands, its loss, learning rate, identity probability,
    this step's FLOPs, throughput, the share of the epoch's time spent waiting for data (a loader
    that does not keep up: raise --workers) and ETA."""
    elapsed = max(time.time() - run.t_epoch, 1e-9)
    rate = run.seen / elapsed
    eta = (time.time() - t_start) / (run.step - step0) * (run.total_steps - run.step)
    prob = run.sampler.prob(epoch)
    p = "" if prob is None else f" p {prob:.2f}"
    run.d.log(f"epoch {epoch + 1}/{run.args.epochs} step {run.step}/{run.total_steps} "
              f"loss {run.sums['loss'] / run.sums['n']:.3f} lr {run.schedule.get_last_lr()[0]:.2e}{p} "
              f"{flops / 1e6:.2f} MFLOPs {rate:.0f} img/s, {100 * run.waited / elapsed:.0f}% waiting for data, "
              f"ETA {fmt_time(eta)}")


def all_reduce_seconds(ddp, steps):
    """Seconds the gradient all-reduce took over `steps` steps, in all and not hidden behind the
    backward pass: DDP's own timer (it samples iterations 1-10, then every 100th) times steps; 0
    with one process."""
    if not isinstance(ddp, DistributedDataParallel):
        return 0.0, 0.0
    stats = ddp._get_ddp_logging_data()
    comm, overlap = stats.get("avg_backward_comm_time", 0), stats.get("avg_backward_compute_comm_overlap_time", 0)
    return comm * steps / 1e9, max(comm - overlap, 0) * steps / 1e9


def epoch_seconds(run):
    """Where this process's epoch went (beyond the paper): waiting for the loader, the steps
    (forward, backward with its all-reduce, optimizer), evaluation; and of the steps, the gradient
    all-reduce, in all and not hidden behind the backward pass (all_reduce_seconds: DDP's
    sampled timer times the epoch's steps, an estimate)."""
    steps = run.seen // (run.args.batch_size * run.args.accum_steps * run.d.world)   # since the epoch began here
    reduce, exposed = all_reduce_seconds(run.ddp, steps)
    return {"data": run.waited, "steps": run.ready - run.t_epoch - run.waited, "evaluation": time.time() - run.ready,
            "all_reduce": reduce, "all_reduce_exposed": exposed}


def epoch_record(run, epoch, evals):
    """The epoch's log record: loss, learning rate, identity probability, mean FLOPs, throughput,
    the reported archs' val figures (`evals`) and the sampler's statistics."""
    n = max(run.sums["n"], 1)
    return {"epoch": epoch + 1, "step": run.step, "loss": run.sums["loss"] / n, "lr": run.schedule.get_last_lr()[0],
            "identity_prob": run.sampler.prob(epoch), "mean_flops": run.sums["flops"] / n,
            "images_per_s": run.seen / max(time.time() - run.t_epoch, 1e-9), "seconds": epoch_seconds(run),
            "val": {k: {m: v[m] for m in ("top1", "top5", "loss", "prob", "n")} for k, v in evals.items()},
            **run.sampler.statistics(run.sums), "bad_images": data.bad_images(run.data, run.d),
            "provenance": run.provenance}


def write_record(run, record, every_s=60):
    """Append the epoch's record to log.jsonl (one JSON object per epoch) and draw curves.png from
    the second epoch on (a curve needs two points), after the last epoch and at most every
    `every_s` seconds before (a drawing takes about 0.3 s)."""
    if run.d.main:
        with open(os.path.join(run.args.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if record["epoch"] >= 2 and (record["epoch"] == run.args.epochs or time.time() - run.t_drawn >= every_s):
            plot_curves(os.path.join(run.args.out, "log.jsonl"), os.path.join(run.args.out, "curves.png"))
            run.t_drawn = time.time()


def learned_phase_statistics(log_path, uniform_epochs):
    """The sampler statistics of a run's learned phase, from its log.jsonl: the mean over the epochs
    after the uniform ones (equal steps each)."""
    with open(log_path) as f:
        records = [json.loads(line) for line in f if line.strip()][uniform_epochs:]
    stats = [r["sampled"] for r in records]
    return {"block_share": np.mean([s["block_share"] for s in stats], axis=0).tolist(),
            "patch_share": {p: float(np.mean([s["patch_share"][p] for s in stats])) for p in stats[0]["patch_share"]},
            "depth_share": np.mean([s["depth_share"] for s in stats], axis=0).tolist()}


# -----------------------------------------------------------------------------
# Pictures

_NOTE = "note: matplotlib is not installed, so no {} was drawn (pip install matplotlib)"
_noted = set()


def pyplot(what):
    """matplotlib.pyplot on the Agg backend, or None (after one note per kind of picture)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if what not in _noted:
            _noted.add(what)
            print(_NOTE.format(what), flush=True)
        return None
    return plt


def save(fig, plt, path):
    """Atomic, like every other file the project writes."""
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_curves(log_path, png_path):
    """curves.png from log.jsonl: training loss, val top-1 of each reported arch (a retrain: its
    model) and, for a super-transformer, the identity probability and the share of steps that
    trained each block position and patch size."""
    plt = pyplot("curves.png")
    if plt is None:
        return None
    with open(log_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    epochs = [r["epoch"] for r in records]
    sampled, probs = [r.get("sampled") for r in records], [r.get("identity_prob") for r in records]
    has_prob = any(p is not None for p in probs)
    panels = 2 + has_prob + all(sampled)   # a retrain: loss and val top-1 only
    fig, axes = plt.subplots(1, panels, figsize=(4.3 * panels, 3.8))
    axes[0].plot(epochs, [r["loss"] for r in records], marker=".")
    axes[0].set(title="training loss", xlabel="epoch")
    for name in records[-1]["val"]:
        axes[1].plot(epochs, [r["val"].get(name, {}).get("top1") for r in records], marker=".", label=name)
    axes[1].set(title="val top-1 (%)", xlabel="epoch")
    axes[1].legend(fontsize=8)
    if has_prob:
        axes[2].plot(epochs, probs, marker=".", color="tab:purple")
        axes[2].set(title="identity probability", xlabel="epoch", ylim=(0, 1))
    if all(sampled):   # who the sampler trains: a starved block position or patch size shows here
        for i in range(len(sampled[0]["block_share"])):
            axes[-1].plot(epochs, [s["block_share"][i] for s in sampled], marker=".", label=f"block {i + 1}")
        for p in sampled[0]["patch_share"]:
            axes[-1].plot(epochs, [s["patch_share"][p] for s in sampled], ls="--", label=f"patch {p}")
        axes[-1].set(title="share of steps that train it", xlabel="epoch", ylim=(0, 1.05))
        axes[-1].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.grid(alpha=0.3)
    width = 4.3 * panels     # margins in inches: tight_layout would draw the figure twice (0.2 s of 0.5)
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.13, top=0.92, wspace=0.3)
    return save(fig, plt, png_path)


def plot_search(records, front, png_path, best=None, retrained=None, baseline_records=None, title=""):
    """pareto.png: every candidate (FLOPs, held-out top-1 of its inherited weights) shaded by
    generation, the Pareto front as a line, the best arch, random search's candidates, and the
    val top-1 of the archs retrained (searched, hand-designed) where given."""
    plt = pyplot("pareto.png")
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    mflops = lambda rs: [r["flops"] / 1e6 for r in rs]
    if baseline_records:
        ax.scatter(mflops(baseline_records), [r["top1"] for r in baseline_records], s=12, color="tab:orange",
                   alpha=0.5, label="random search")
    points = ax.scatter(mflops(records), [r["top1"] for r in records], s=14, c=[r["generation"] for r in records],
                        cmap="viridis", label="evaluated (shade: generation)")
    fig.colorbar(points, ax=ax, label="generation")
    front = sorted(front, key=lambda r: r["flops"])
    ax.plot(mflops(front), [r["top1"] for r in front], color="black", lw=1.2, drawstyle="steps-post",
            label="Pareto front")
    if best is not None:
        ax.scatter([best["flops"] / 1e6], [best["top1"]], marker="*", s=220, color="red", edgecolor="black", zorder=5,
                   label="best (search fitness)")
    for (name, r), marker in zip((retrained or {}).items(), "DsP^v"):
        ax.scatter([r["flops"] / 1e6], [r["top1"]], marker=marker, s=70, edgecolor="black", zorder=6,
                   label=f"{name}, retrained (val top-1)")
    ax.set(xlabel="MFLOPs (multiply-accumulates)", ylabel="top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save(fig, plt, png_path)
