"""
What a run reports: train.py's progress lines, its set-up, the epoch record in log.jsonl with the
sampler statistics (who the sampler trains, who it starves), a resumed run's log kept in step
with its checkpoint; and the pictures: curves.png (loss, top-1 of every reported arch, the
identity probability and the sampler statistics, per epoch) and search.py's pareto.png (every
evaluated candidate, the Pareto front, the best arch, retrained accuracies, random search's).

matplotlib is imported here, lazily, with the Agg backend (no display needed). Where it is missing
a run prints one note and goes on: pictures never fail a run.
"""
import json
import os
import time

import numpy as np

import runs
import vitas
from cli import fmt_time

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

def start_log(run, resumed):
    """log.jsonl as the checkpoint has it: a resumed run keeps the epochs its checkpoint completed,
    each once (an epoch logged just before a crash, and not saved, is trained and logged again); a
    fresh run starts its own, an earlier run's log set aside as log.before-<time>.jsonl."""
    path = os.path.join(run.args.out, "log.jsonl")
    if not run.d.main:
        return
    if resumed:
        runs.keep_log_lines(path, run.step // run.steps_per_epoch)
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

def epoch_record(run, epoch, evals):
    """The epoch's log record: loss, learning rate, identity probability, mean FLOPs, throughput,
    the reported archs' val figures (`evals`) and the sampler's statistics."""
    n = max(run.sums["n"], 1)
    return {"epoch": epoch + 1, "step": run.step, "loss": run.sums["loss"] / n, "lr": run.schedule.get_last_lr()[0],
            "identity_prob": run.sampler.prob(epoch), "mean_flops": run.sums["flops"] / n,
            "images_per_s": run.seen / max(time.time() - run.t_epoch, 1e-9),
            "val": {k: {"top1": v["top1"], "top5": v["top5"], "loss": v["loss"], "n": v["n"]}
                    for k, v in evals.items()},
            **run.sampler.statistics(run.sums), "provenance": run.provenance}

def write_record(run, record, every_s=60):
    """Append the epoch's record to log.jsonl (one JSON object per epoch) and draw curves.png after
    the last epoch and at most every `every_s` seconds before (a drawing takes about 0.3 s)."""
    if run.d.main:
        with open(os.path.join(run.args.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if record["epoch"] == run.args.epochs or time.time() - run.t_drawn >= every_s:
            plot_curves(os.path.join(run.args.out, "log.jsonl"), os.path.join(run.args.out, "curves.png"))
            run.t_drawn = time.time()


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
    fig.tight_layout()
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
