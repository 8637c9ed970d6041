"""
Pictures of a run: train.py's curves.png (loss, top-1 of every reported arch, the identity
probability and the sampler statistics, per epoch) and search.py's pareto.png (every evaluated
candidate, the Pareto front, the best arch, retrained accuracies, random search's candidates).

matplotlib is imported here, lazily, with the Agg backend (no display needed). Where it is missing
a run prints one note and goes on: pictures never fail a run.
"""
import json
import os

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
    """curves.png from log.jsonl: training loss, val top-1 of each reported arch, identity probability
    and (a super-transformer) the share of steps that trained each block position and patch size."""
    plt = pyplot("curves.png")
    if plt is None:
        return None
    with open(log_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    epochs = [r["epoch"] for r in records]
    sampled = [r.get("sampled") for r in records]
    fig, axes = plt.subplots(1, 4 if all(sampled) else 3, figsize=(17 if all(sampled) else 13, 3.8))
    axes[0].plot(epochs, [r["loss"] for r in records], marker=".")
    axes[0].set(title="training loss", xlabel="epoch")
    for name in records[-1]["val"]:
        axes[1].plot(epochs, [r["val"].get(name, {}).get("top1") for r in records], marker=".", label=name)
    axes[1].set(title="val top-1 (%)", xlabel="epoch")
    axes[1].legend(fontsize=8)
    probs = [r.get("identity_prob") for r in records]
    if any(p is not None for p in probs):
        axes[2].plot(epochs, probs, marker=".", color="tab:purple")
    axes[2].set(title="identity probability", xlabel="epoch", ylim=(0, 1))
    if all(sampled):   # who the sampler trains: a starved block position or patch size shows here
        for i in range(len(sampled[0]["block_share"])):
            axes[3].plot(epochs, [s["block_share"][i] for s in sampled], marker=".", label=f"block {i + 1}")
        for p in sampled[0]["patch_share"]:
            axes[3].plot(epochs, [s["patch_share"][p] for s in sampled], ls="--", label=f"patch {p}")
        axes[3].set(title="share of steps that train it", xlabel="epoch", ylim=(0, 1.05))
        axes[3].legend(fontsize=7, ncol=2)
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
