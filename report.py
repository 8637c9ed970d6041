"""
RESULTS.md and the README's summary from the figures experiment.py reads of results/ (python
experiment.py table): the statistics over the records (a reference's reliability, each recipe's
ranking and learning over its supernet seeds, the outcome's margins), the tables and their prose,
and --check, which compares the committed files with what the records give. Of results/ it reads
only each record's provenance (provenance_rows) and trains nothing; experiment.py imports it, never
the other way (what the prose says of how the experiments ran comes in the figures, under "setup").
"""
import collections
import glob
import json
import os

import numpy as np

import cli
import rankcheck

# -----------------------------------------------------------------------------
# Formatting


def fmt(v, digits=2):
    return "n/a" if v is None else f"{v:.{digits}f}"


def span(interval):
    return "n/a" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def mean_sd(values):
    """Mean ± sample standard deviation (ddof=1) over seeds; one seed's value alone."""
    v = [x for x in values if x is not None]
    if len(v) > 1:
        return f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}"
    return f"{v[0]:.2f}" if v else "n/a"


def verdict(minus, higher="better", lower="worse"):
    """A comparison in words, by the project's rule: `higher` or `lower` only where both intervals,
    over the archs and over the supernet seeds, exclude 0; else no difference."""
    intervals = [minus["interval"], minus["over_seeds"]["interval"]]
    if None in intervals:
        return "no difference"
    if all(lo > 0 for lo, _ in intervals):
        return higher
    if all(hi < 0 for _, hi in intervals):
        return lower
    return "no difference"


# -----------------------------------------------------------------------------
# Figures from the records experiment.py reads


def reference_rows(refs):
    """Per reference set (experiment.reference_table), and the window's archs of each patch size
    apart: its size, seeds, top-1 range and reliability (rankcheck.reference_summary)."""
    rows = []
    for name, table in refs.items():
        patches = sorted({a.patch_size for a, _ in table})
        subsets = [(name, table)] + [(f"{name} p{p}", [(a, t) for a, t in table if a.patch_size == p])
                                     for p in patches if len(patches) > 1 and name == "window"]
        for label, sub in subsets:
            if len(sub) < 2:
                continue
            by_seed = [t for _, t in sub]
            rows.append({"set": label, "archs": len(sub), "second_seed": sum(len(t) > 1 for t in by_seed),
                         "top1_range": [float(min(map(min, by_seed))), float(max(map(max, by_seed)))],
                         "top1_sd": rankcheck.seed_sd(by_seed), **rankcheck.reference_summary(by_seed)})
    return rows


def tau_difference(fitness, base, taus, base_taus, top1):
    """tau(fitness) - tau(base) with the two intervals a verdict needs: a paired bootstrap over the
    archs (fitness: one per supernet seed; base likewise, or one fixed predictor) and ("over_seeds")
    a t interval over the seeds (taus, base_taus: their taus, paired by seed; base_taus may be one)."""
    return {**rankcheck.paired_difference(fitness, base, top1),
            "over_seeds": rankcheck.seed_difference(taus, base_taus)}


def seed_scores(fitnesses, top1, r_s, mean):
    """Per supernet seed, a fitness's tau against the reference mean, its tau_c and its top-3 regret."""
    taus = [rankcheck.kendall_tau(f, mean) for f in fitnesses]
    return taus, [rankcheck.scored(t, r_s)["tau_c"] for t in taus], [rankcheck.top_regret(f, top1) for f in fitnesses]


def recipe_rows(supers, window, space, baselines=("v2",)):
    """Per recipe, over its supernet seeds on the window reference (experiment.reference_table's
    "window"): mean and SD of tau, tau_c and top-3 regret; its mean tau minus FLOPs' tau (FLOPs
    in the search space `space`) and ("minus", by baseline recipe; None for the baseline itself
    or where no seed is shared) minus each baseline's mean tau on the seeds both have, each with a
    paired bootstrap interval over the archs and ("over_seeds") a t interval over the supernet
    seeds: a recipe is better only where both exclude 0."""
    archs, top1 = zip(*window)
    flops = rankcheck.floor_predictors(archs, space)["flops"]
    flops_tau = rankcheck.kendall_tau(flops, rankcheck.reference_mean(top1))
    by_recipe = {}
    for r in supers:
        by_recipe.setdefault(r["recipe"], {})[r["seed"]] = r

    def at(records, key, seeds):                    # each seed's window figure
        return [records[s]["window"][key] for s in seeds]

    def versus(rs, baseline):                       # rs's figures minus the baseline's, on the seeds both have
        base = by_recipe.get(baseline, {})
        shared = [s for s in sorted(rs) if s in base]
        if rs is base or not shared:
            return None
        return {"seeds": shared, **tau_difference(at(rs, "fitness", shared), at(base, "fitness", shared),
                                                  at(rs, "kendall_tau", shared), at(base, "kendall_tau", shared),
                                                  top1)}

    rows = []
    for name, rs in by_recipe.items():
        seeds = sorted(rs)
        pick = lambda key: at(rs, key, seeds)       # noqa: E731
        rows.append({"recipe": name, "seeds": seeds, "kendall_tau": pick("kendall_tau"), "tau_c": pick("tau_c"),
                     "top3_regret": pick("top3_regret"),
                     "tau_c_by_patch": {p: [b[p]["tau_c"] for b in pick("by_patch")]
                                        for p in rs[seeds[0]]["window"]["by_patch"]},
                     "minus_flops": tau_difference(pick("fitness"), flops, pick("kendall_tau"), flops_tau, top1),
                     "minus": {b: versus(rs, b) for b in baselines},
                     "min_block_share": [min(rs[s]["sampled"]["block_share"]) for s in seeds],
                     "cpu_minutes": [rs[s]["cpu_minutes"] for s in seeds]})
    return rows


def reported_ratio(record, alone):
    """The mean over the reported archs of their val top-1 at the end of super-transformer training
    over their val top-1 trained alone (experiment.reported_alone); None where the record or a
    reference lacks one."""
    reported = record.get("reported", {}).values()        # records since 2026-12-02
    keys = [json.dumps(v["arch"]) for v in reported]
    if not keys or any(k not in alone for k in keys):
        return None
    return float(np.mean([v["val_top1"] / alone[k] for v, k in zip(reported, keys)]))


def learning_rows(supers, window, alone=None):
    """Learning beside ranking: per super-transformer, the mean over the window archs of the held-out
    top-1 its inherited weights give over the val top-1 the arch reaches trained alone (the
    reference mean), and the same for the reported archs (reported_ratio, `alone` their
    experiment.reported_alone); per recipe, mean and SD over its seeds with a t interval (the
    reported ratio over the seeds that have it)."""
    archs, top1 = zip(*window)
    mean_alone = rankcheck.reference_mean(top1)
    per_seed = [{"recipe": r["recipe"], "seed": r["seed"],
                 "ratio": float(np.mean(np.asarray(r["window"]["fitness"]) / mean_alone)),
                 "reported": reported_ratio(r, alone or {})} for r in supers]
    per_recipe = []
    for recipe in dict.fromkeys(r["recipe"] for r in per_seed):
        ratios = [r["ratio"] for r in per_seed if r["recipe"] == recipe]
        reported = [r["reported"] for r in per_seed if r["recipe"] == recipe and r["reported"] is not None]
        per_recipe.append({"recipe": recipe, "ratios": ratios, "over_seeds": rankcheck.seed_difference(ratios),
                           "reported": reported,
                           "reported_over_seeds": rankcheck.seed_difference(reported) if reported else None})
    return per_seed, per_recipe


def sampler_rows(supers):
    """The learned phase's sampler statistics per recipe, means over its seeds."""
    out = {}
    for r in supers:
        out.setdefault(r["recipe"], []).append(r["sampled"])
    return [{"recipe": name, **{k: np.mean([s[k] for s in ss if k in s], axis=0).tolist()
                                for k in ("block_share", "depth_share") if any(k in s for s in ss)},
             "patch_share": {p: float(np.mean([s["patch_share"][p] for s in ss])) for p in ss[0]["patch_share"]}}
            for name, ss in out.items()]


def fitness_rows(supers, window):
    """Per recipe on the window reference: the search's fitness, held-out top-1, against minus the
    held-out loss, which the same pass over the held-out images gives (so at the same cost): each
    one's tau_c and top-3 regret per supernet seed, and tau(loss) - tau(top-1) with intervals paired
    over the archs and over the seeds."""
    top1 = [t for _, t in window]
    r_s, mean = rankcheck.reliability(top1)[2], rankcheck.reference_mean(top1)
    rows = []
    for recipe in dict.fromkeys(r["recipe"] for r in supers):
        rs = [r["window"] for r in supers if r["recipe"] == recipe and "loss_fitness" in r.get("window", {})]
        if not rs:
            continue
        by = {name: [w[key] for w in rs] for name, key in (("top1", "fitness"), ("loss", "loss_fitness"))}
        scores = {name: seed_scores(fs, top1, r_s, mean) for name, fs in by.items()}   # (taus, tau_c, regret)
        rows.append({"recipe": recipe, "seeds": len(rs),
                     **{f"tau_c_{n}": scores[n][1] for n in by}, **{f"regret_{n}": scores[n][2] for n in by},
                     "minus": tau_difference(by["loss"], by["top1"], scores["loss"][0], scores["top1"][0], top1)})
    return rows


def variant_rows(variants, window):
    """Per fitness variant of the rescored super-transformers ({(recipe, measure, held-out images):
    {supernet seed: (fitness of each window arch, CPU-seconds per arch)}}): its CPU-seconds per
    candidate, tau_c and top-3 regret per seed, and tau(variant) - tau(top-1 on the smallest
    split, the grid search's) paired over the archs and over the seeds."""
    top1 = [t for _, t in window]
    r_s, mean = rankcheck.reliability(top1)[2], rankcheck.reference_mean(top1)
    rows = []
    for (recipe, measure, n), by_seed in sorted(variants.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        base = variants[recipe, "top1", min(k[2] for k in variants if k[0] == recipe)]
        seeds = sorted(set(by_seed) & set(base))
        fs, bs = [by_seed[s][0] for s in seeds], [base[s][0] for s in seeds]
        (taus, tau_c, regret), base_taus = seed_scores(fs, top1, r_s, mean), seed_scores(bs, top1, r_s, mean)[0]
        rows.append({"recipe": recipe, "measure": measure, "holdout_images": n, "seeds": len(seeds),
                     "cpu_seconds": float(np.mean([by_seed[s][1] for s in seeds])), "tau_c": tau_c, "regret": regret,
                     "minus": tau_difference(fs, bs, taus, base_taus, top1)})
    return rows


# -----------------------------------------------------------------------------
# The text: RESULTS.md and the README's summary


class Doc:
    """What render() writes: plain columns for a terminal, or markdown (RESULTS.md) with the prose
    that says how to read each table (no figure in the prose: every figure comes from results/)."""

    def __init__(self, markdown):
        self.markdown, self.lines = markdown, []

    def heading(self, text, level=2):
        self.lines += ["", "#" * level + " " + text if self.markdown else text]

    def para(self, text):
        if self.markdown:
            self.lines += ["", text]

    def row(self, cells, header=False):
        if header:
            self.lines.append("")
        self.lines.append("| " + " | ".join(cells) + " |" if self.markdown else "  ".join(cells))
        if self.markdown and header:
            self.lines.append("|---" * len(cells) + "|")

    def text(self):
        return "\n".join(self.lines).strip("\n") + "\n"


INTRO = """# vitas: results

Every figure here is written by `python experiment.py table --markdown --write RESULTS.md` from the
records in `results/` (one small JSON file per training or measurement); CI checks that this file
and the README's summary are what the records give. Setting: the embedded synthetic data at
quick-start scale, tiny space, FLOPs window {lo}M-{hi}M, data seed {data_seed} for every training
(the same images and held-out split), effective batch 64, lr 2e-3, one process per training on a
CPU. Intervals are {level}%. A difference whose interval holds 0 is no difference."""


def render(figures, markdown=False):
    """The text of experiment.py table's figures: plain columns for a terminal, or (markdown)
    RESULTS.md's. figures["setup"] says how the experiments ran (the prose names it); a section
    whose records are missing is left out."""
    setup, per_recipe = figures["setup"], figures["recipes"]     # per_recipe: the supernets scored
    doc = Doc(markdown)
    if markdown:
        doc.lines.append(INTRO.format(lo=setup["lo"] // 10 ** 6, hi=setup["hi"] // 10 ** 6,
                                      data_seed=setup["data_seed"], level=round(100 * rankcheck.LEVEL)))
    reference_section(doc, figures["reference"], setup)
    if per_recipe:
        sampler_section(doc, sampler_rows(figures["supernets"]))
        ranking_section(doc, figures["supernets"], per_recipe, figures["versus_default"], figures["default"])
        learning_section(doc, figures["learning_per_seed"], figures["learning"])
        fitness_section(doc, figures["fitness"])
    if figures.get("variants"):
        variant_section(doc, figures["variants"])
    if figures["outcome"]:
        outcome_section(doc, figures["outcome"], figures["margins"], setup, figures.get("default_search"))
    if figures["settings"] and per_recipe:
        settings_section(doc, figures["settings"])
    if figures["bench"]:
        bench_section(doc, figures["bench"])
    if figures.get("provenance"):
        provenance_section(doc, figures["provenance"])
    return doc.text()


def provenance_rows(results):
    """Per record set (a folder of results/): how many of its records each commit wrote ("+changes":
    its tree had uncommitted changes) and how many carry none (written before records kept it)."""
    rows = []
    folders = {os.path.dirname(p) for p in glob.glob(os.path.join(results, "**", "*.json"), recursive=True)}
    for folder in sorted(folders):
        commits = collections.Counter()
        for path in glob.glob(os.path.join(folder, "*.json")):
            with open(path) as f:
                source = json.load(f).get("provenance") or {}
            changes = "+changes" if source.get("uncommitted_changes") else ""
            commits[source.get("commit", "none")[:10] + changes] += 1
        rows.append({"set": os.path.relpath(folder, results), "records": sum(commits.values()),
                     "commits": dict(sorted(commits.items()))})
    return rows


def provenance_section(doc, rows):
    doc.heading("Where the records come from")
    doc.para("Every record written since 2026-12-06 keeps the commit of the code that wrote it (+changes: its "
             "tree had uncommitted changes), the torch version and the date; none: written before records kept "
             "them, their source is the git history of results/.")
    doc.row(["records", "count", "commits"], header=True)
    for r in rows:
        doc.row([f"results/{r['set']}", str(r["records"]), ", ".join(f"{c} ({n})" for c, n in r["commits"].items())])


def reference_section(doc, refs, setup):
    doc.heading("The reference: archs trained alone, and how reliable it is")
    doc.para(f"`python experiment.py reference`: {setup['per_cell']} archs from each (patch size, depth) cell of the "
             f"window, drawn by a seeded generator (never by a fitness), each trained alone for {setup['epochs']} "
             "epochs with several training seeds; and a set spread over the whole FLOPs range, where FLOPs alone rank. "
             "One seed's reliability r1 = sin(pi tau_ss / 2) from the seeds' agreement tau_ss (mean over pairs of "
             "seeds), the S-seed mean's r_S by Spearman-Brown, the oracle bound tau* = (2/pi) asin(sqrt(r_S)); "
             "bootstrap over the archs. A resample whose seeds disagree (tau_ss <= 0) counts as tau* 0; its "
             f"share is the last column. Under tau* {rankcheck.MIN_TAU_STAR} a reference cannot rank: tau_c is "
             "undefined there (n/a; a resample's is left out of tau_c's intervals).")
    doc.row(["set", "archs", "2nd seed", "top-1 range", "seed SD", "seed tau", "r1", "seeds S", "r_S", "tau*",
             "90% interval", "seeds disagree"], header=True)
    for r in refs:
        doc.row([r["set"], str(r["archs"]), str(r["second_seed"]), f"{r['top1_range'][0]:.1f}-{r['top1_range'][1]:.1f}",
                 fmt(r["top1_sd"]), fmt(r["seed_tau"]), fmt(r["r1"]), str(r["seeds"]), fmt(r["reliability"]),
                 fmt(r["tau_star"]), span(r["tau_star_interval"]), f"{100 * r['disagreeing_resamples']:.0f}%"])


def sampler_section(doc, rows):
    doc.heading("Who gets trained: the sampler statistics of the learned phase")
    doc.para("The share of steps that trained each block position and each patch size, and the depth histogram "
             "of the drawn networks (`log.jsonl` \"sampled\"), mean over each recipe's supernet seeds.")
    doc.row(["recipe", "block 1 ... 6", "patch 4 / 8", "depth 0 ... 6"], header=True)
    for r in rows:
        doc.row([r["recipe"], " ".join(f"{v:.2f}" for v in r["block_share"]),
                 " / ".join(f"{r['patch_share'][p]:.2f}" for p in sorted(r["patch_share"], key=int)),
                 " ".join(f"{v:.2f}" for v in r.get("depth_share", [])) or "n/a"])


def ranking_section(doc, supers, per_recipe, versus, default):
    doc.heading("Ranking: the recipe grid against the window reference")
    doc.para("`python experiment.py grid --seeds 0 1 2 3`: a super-transformer per recipe and supernet seed at "
             "equal sub-network passes, the window archs scored with the inherited weights (held-out top-1). "
             "tau is Kendall tau-b against the reference mean, tau_c corrected for the reference's noise; "
             "top-3 regret is the reference top-1 lost by keeping the best of the fitness's top 3 (ties at the "
             "cut broken by arch order). Only the recipes `v1` and `v1-code` are the paper's first version; the "
             "others go beyond it (README, Method).")
    doc.row(["recipe", "seed", "tau", "90% interval", "tau_c", "90% interval", "tau p4", "tau_c p4", "tau p8",
             "tau_c p8", "FLOPs tau", "tau - FLOPs tau", "90% interval", "space tau", "blocks min/max", "patch 4/8",
             "train CPU-min"], header=True)
    for r in supers:
        w, sp = r["window"], r.get("space")
        flops = w["floors"]["flops"]
        blocks, patches = r["sampled"]["block_share"], r["sampled"]["patch_share"]
        doc.row([r["recipe"], str(r["seed"]), fmt(w["kendall_tau"]), span(w["tau_interval"]), fmt(w["tau_c"]),
                 span(w["tau_c_interval"]),
                 *(fmt(w["by_patch"].get(p, {}).get(k)) for p in ("4", "8") for k in ("kendall_tau", "tau_c")),
                 fmt(flops["kendall_tau"]), fmt(flops["fitness_minus_floor"]["difference"]),
                 span(flops["fitness_minus_floor"]["interval"]), fmt(sp and sp["kendall_tau"]),
                 f"{min(blocks):.2f}/{max(blocks):.2f}",
                 "/".join(f"{patches[p]:.2f}" for p in sorted(patches, key=int)), fmt(r["cpu_minutes"], 1)])
    doc.heading("Per recipe", 3)
    doc.para("Mean ± SD (ddof=1) over supernet seeds; a difference is of the mean tau over the seeds both recipes "
             "have, with 90% intervals paired over the archs (bootstrap, the same resamples for both) and over "
             "the supernet seeds (t).")
    doc.row(["recipe", "seeds", "tau", "tau_c", "tau_c p4", "tau_c p8", "top-3 regret", "tau - FLOPs tau", "archs",
             "seeds", "tau - v2 tau", "archs", "seeds", "min block share", "train CPU-min"], header=True)
    for r in per_recipe:
        vs, vf = r["minus"]["v2"], r["minus_flops"]
        doc.row([r["recipe"], ",".join(map(str, r["seeds"])), mean_sd(r["kendall_tau"]), mean_sd(r["tau_c"]),
                 *(mean_sd(r["tau_c_by_patch"].get(p, [])) for p in ("4", "8")), mean_sd(r["top3_regret"]),
                 fmt(vf["difference"]), span(vf["interval"]), span(vf["over_seeds"]["interval"]),
                 *(["-"] * 3 if vs is None else [fmt(vs["difference"]), span(vs["interval"]),
                                                  span(vs["over_seeds"]["interval"])]),
                 mean_sd(r["min_block_share"]), mean_sd(r["cpu_minutes"])])
    if versus:
        doc.heading(f"Against the default recipe, {default}", 3)
        doc.para(f"`{default}` became the default after this grid was run, on it, the learning figures below and "
                 "those of the scarce settings: the figures it is reported on are among those it was chosen by. "
                 "Same intervals as above; a recipe ranks better or worse only where both exclude 0.")
        doc.row(["recipe", "seeds", f"tau - {default} tau", "archs", "seeds", "ranks"], header=True)
        for vs in versus:
            doc.row([vs["recipe"], ",".join(map(str, vs["seeds"])), fmt(vs["difference"]), span(vs["interval"]),
                     span(vs["over_seeds"]["interval"]), verdict(vs)])


def learning_section(doc, per_seed, per_recipe):
    doc.heading("Learning: inherited weights against the archs trained alone")
    doc.para("Per super-transformer, the mean over the window archs of their held-out top-1 with the inherited "
             "weights over their val top-1 trained alone (the reference mean): how much of what an arch can "
             "learn its slice has learned. Reported: the same for the three archs train.py reports (largest, "
             "smallest, middle of the window), their val top-1 at the end of super-transformer training over "
             "their val top-1 trained alone as the window's are (mean of seeds 0-3; records since 2026-12-02 keep "
             "it). Per recipe, mean ± SD over the supernet seeds with a 90% t interval.")
    doc.row(["recipe", "seeds", "inherited / alone", "90% interval", "per seed", "reported: seeds",
             "inherited / alone", "90% interval"], header=True)
    for r in per_recipe:
        seeds = [x for x in per_seed if x["recipe"] == r["recipe"]]
        doc.row([r["recipe"], ",".join(str(x["seed"]) for x in seeds), mean_sd(r["ratios"]),
                 span(r["over_seeds"]["interval"]), " ".join(f"{x['ratio']:.2f}" for x in seeds),
                 ",".join(str(x["seed"]) for x in seeds if x["reported"] is not None) or "none",
                 *reported_cells(r)])


def reported_cells(learning):
    """A learning row's reported ratio: mean ± SD and its interval over the seeds that have it."""
    over = learning["reported_over_seeds"]
    return [mean_sd(learning["reported"]), "n/a" if over is None else span(over["interval"])]


def fitness_section(doc, rows):
    doc.heading("Fitness: held-out top-1 or held-out loss")
    doc.para("The search scores a candidate by its held-out top-1 with the inherited weights (`--fitness top1`); "
             "the same pass gives its held-out cross-entropy (`--fitness loss`, minus the loss), at the same CPU "
             "cost per candidate. Both scored on the grid's supernets against the window reference: mean ± SD "
             "over supernet seeds; tau(loss) - tau(top-1) with 90% intervals paired over the archs and over the "
             "seeds; one fitness ranks better only where both exclude 0.")
    doc.row(["recipe", "seeds", "tau_c top-1", "tau_c loss", "top-3 regret top-1", "top-3 regret loss",
             "tau loss - tau top-1", "archs", "seeds", "loss ranks"], header=True)
    for r in rows:
        m = r["minus"]
        doc.row([r["recipe"], str(r["seeds"]), mean_sd(r["tau_c_top1"]), mean_sd(r["tau_c_loss"]),
                 mean_sd(r["regret_top1"]), mean_sd(r["regret_loss"]), fmt(m["difference"]), span(m["interval"]),
                 span(m["over_seeds"]["interval"]), verdict(m)])


def variant_section(doc, rows):
    doc.heading("Fitness variants: measure and held-out size (beyond the paper)")
    doc.para("The grid's super-transformers rescored (`python experiment.py rescore`): the window reference "
             "archs scored by each measure on the held-out split the grid's search used and on a larger one "
             "(generated images beside it, the training images unchanged); CPU-seconds per candidate on one "
             "thread. Against top-1 on the grid's split: tau(variant) - tau(top-1) with 90% intervals paired over "
             "the archs and over the seeds; a variant ranks better only where both exclude 0.")
    doc.row(["recipe", "fitness", "held-out", "seeds", "CPU-s / candidate", "tau_c", "top-3 regret", "minus top-1",
             "archs", "seeds", "ranks"], header=True)
    for r in rows:
        m = r["minus"]
        doc.row([r["recipe"], r["measure"], str(r["holdout_images"]), str(r["seeds"]), fmt(r["cpu_seconds"]),
                 mean_sd(r["tau_c"]), mean_sd(r["regret"]), fmt(m["difference"]), span(m["interval"]),
                 span(m["over_seeds"]["interval"]), verdict(m)])


def outcome_section(doc, outcome, margins, setup, default_search):
    doc.heading("Outcome: does the searched arch beat hand design?")
    seeds = lambda s: ", ".join(map(str, s)) if len(s) < 5 else f"{s[0]}-{s[-1]}"
    doc.para(f"`python experiment.py outcome`: each supernet's evolutionary pick trained alone, {setup['epochs']} "
             f"epochs, mean top-1 over training seeds {seeds(setup['outcome_seeds'])}, and the two hand-designed "
             f"networks nearest the window's top over training seeds {seeds(setup['design_seeds'])}, beside the "
             f"median of {setup['random_archs']} random window archs (training seeds {seeds(setup['random_seeds'])}); "
             "a pick wins when it is above both designs and the random median. A recipe's pick is its grid "
             "search's, on the held-out split alone; RECIPE/FITNESS@N's the pick of its rescore's search by that "
             "fitness on N held-out images"
             + ("." if default_search is None else
                f" ({default_search['variant']}: as search.py searches by default on the synthetic data)."))
    doc.row(["recipe", "seed", "searched", "MFLOPs", *rankcheck.BASELINES, "random median", "wins"], header=True)
    for r in outcome:
        doc.row([r["recipe"], str(r["seed"]), fmt(r["top1"], 1), fmt(r["flops"] / 1e6),
                 *(fmt(r[n], 1) for n in rankcheck.BASELINES), fmt(r["random_median"], 1),
                 "yes" if r["wins"] else "no"])
    doc.para("Searched minus the better hand-designed network, points of top-1; the interval resamples the "
             "supernet seeds and the picks' training seeds, and the designs' training seeds apart, so it counts the "
             "trainings' own noise, the designs' included.")
    doc.row(["recipe", "seeds", "wins", "searched", "margin", "90% interval"], header=True)
    for m in margins:
        doc.row([m["recipe"], str(m["seeds"]), f"{m['wins']} of {m['seeds']}", mean_sd(m["searched"]),
                 fmt(m["margin"]["difference"], 1), span(m["margin"]["interval"])])


def bench_section(doc, benches):
    doc.heading("Benchmarks")
    for b in (b for b in benches if b["kind"] == "step"):
        doc.para(f"`{b['command']}` ({b['date']}, torch {b['torch']}, {b['device']}): one training step of the "
                 "super-transformer (one side; bilateral: both sides) over the same step of the exported plain "
                 "ViT, the median over rounds of interleaved steps with its quartiles; \"no slicing\" is the step "
                 "given its slices as ready leaves (what lies above it is the cost of taking them); kernels are "
                 "CPU aten ops that do work (deterministic). FLOPs counter: "
                 f"{b['counter_archs_per_s'] or 0:,.0f} vitas-1g archs/s on one core. The slices are taken by "
                 "plain indexing (the readable reference); the stacked layout before it (commit 090ac7a) launched "
                 "fewer kernels (1.24-1.29x plain) for about the same CPU step (timed side by side with this "
                 "code, two runs: one side 0.00-0.03 faster, bilateral within 0.03 either way) and was dropped; "
                 "no GPU has timed either, and "
                 "`python bench.py --device cuda --record ...` is the measurement that would decide whether a "
                 "kernel-lean path pays back there.")
        doc.row(["arch", "batch", "MFLOPs", "plain", "one side", "bilateral", "no slicing", "kernels fp32",
                 "one side", "bilateral", "kernels bf16", "one side", "bilateral"], header=True)
        for r in b["rows"]:
            ratio = lambda k: "-" if k not in r else f"{r[k][0]:.3f} ({r[k][1]:.2f}-{r[k][2]:.2f})"   # noqa: E731
            doc.row([r["arch"], str(r["batch"]), fmt(r["mflops"], 1), fmt(r.get("plain_ms"), 1) + " ms",
                     ratio("one_side"), ratio("bilateral"), ratio("no_slicing"),
                     *(f"{p}" if i == 0 else f"{v / p:.2f}" for k in ("fp32", "bf16")
                       for p in [r["kernels"][k][0]] for i, v in enumerate(r["kernels"][k]))])
    throughput = [b for b in benches if b["kind"] == "throughput"]
    if throughput:
        doc.para("FLOPs as a proxy for measured speed (`python bench.py --throughput 100`): Spearman rho between "
                 "FLOPs and seconds per image over random archs of each preset, and a `record.LatencyModel` "
                 "fitted to half of them and judged on the other half. "
                 + " ".join(f"{b['device']} {b['precision']}: {b['source']}." for b in throughput if b.get("source")))
        doc.row(["device", "precision", "preset", "batch", "archs", "rho FLOPs", "rho latency model (half)",
                 "images/s", "measured"], header=True)
        for b in throughput:
            for r in b["rows"]:
                ips = r["images_per_s"]
                doc.row([b["device"], b["precision"], r["preset"], str(r["batch"]), str(r["archs"]),
                         fmt(r["rho_flops"], 3), fmt(r["rho_latency_model_half"], 3),
                         "n/a" if ips is None else f"{ips[0]:,.0f}-{ips[1]:,.0f}", b["date"]])
    for b in (b for b in benches if b["kind"] == "scaling"):
        doc.para(f"`{b['command']}` ({b['date']}): train.py's training loader over generated JPEGs (the "
                 f"super-transformer's augmentation to 224 px), images/s per worker count: "
                 + ", ".join(f"{w}: {v:,.0f}" for w, v in b["loader"].items())
                 + f"; ViTAS-C's plain fp32 step on the same CPU: {b['model_images_per_s']:.1f} images/s. The "
                 f"gradient all-reduce: {b['reduced_bytes'] / 1e6:.0f} MB a step (the slice's own parameters: "
                 f"{b['slice_bytes'] / 1e6:.0f} MB), {b['gloo_seconds']:.2f} s between 2 gloo processes here "
                 "(SCALING.md: what that means for GPUs, as estimates).")


def settings_section(doc, settings):
    doc.heading("Fewer images, fewer steps: ranking and learning where data or training is scarce")
    doc.para("Each setting's flags over the quick start's; with `--synthetic-size` its supernets are scored "
             "against its own reference (`python experiment.py reference` with the same flags), with `--passes` "
             "alone against the quick start's. inherited / alone as in Learning; best reported is the best of the "
             "archs train.py reports, val top-1 at the end of super-transformer training. Mean ± SD over supernet "
             "seeds; the learning intervals are 90% t intervals over them; beside them the quick start's figures "
             "of the same recipe.")
    for st in settings:
        ref = st["reference"]
        doc.para(f"`python experiment.py grid {st['flags']} --results {st['folder']}`: reference of "
                 f"{st['archs']} window archs, {0 if ref is None else ref['seeds']} seeds each"
                 + ("." if ref is None else f" (seed tau {fmt(ref['seed_tau'])}, tau* {fmt(ref['tau_star'])} "
                                            f"{span(ref['tau_star_interval'])}, val top-1 "
                                            f"{ref['top1_range'][0]:.1f}-{ref['top1_range'][1]:.1f}%)."))
        doc.row(["recipe", "seeds", "tau_c", "inherited / alone", "90% interval", "reported: inherited / alone",
                 "90% interval", "best reported val top-1", "quick start: tau_c", "inherited / alone", "90% interval"],
                header=True)
        for r in st["rows"]:
            fl = r["full_learning"]
            doc.row([r["recipe"], ",".join(map(str, r["seeds"])), mean_sd(r["tau_c"]), mean_sd(r["learning"]["ratios"]),
                     span(r["learning"]["over_seeds"]["interval"]), *reported_cells(r["learning"]),
                     mean_sd(r["best_reported"]),
                     mean_sd(r["full_tau_c"] or []), "n/a" if fl is None else mean_sd(fl["ratios"]),
                     "n/a" if fl is None else span(fl["over_seeds"]["interval"])])


SUMMARY = ("<!-- summary: written by python experiment.py table --markdown --write RESULTS.md -->",
           "<!-- end of summary -->")


def summary(figures):
    """The README's short results summary (markdown), from experiment.py table's figures."""
    window = next(r for r in figures["reference"] if r["set"] == "window")
    learning = {r["recipe"]: r for r in figures["learning"]}
    margins = {m["recipe"]: m for m in figures["margins"]}
    beats = lambda m: ("not run" if m is None else f"{m['wins']} of {m['seeds']}, "
                       f"{round(m['margin']['difference'], 1) + 0.0:+.1f} {span(m['margin']['interval'])}")
    default, search = figures["default"], figures["default_search"] or {"variant": None}
    lines = [f"Against {window['archs']} window archs trained alone ({window['seeds']} seeds each; tau* "
             f"{fmt(window['tau_star'])}), per recipe over its supernet seeds (mean ± SD); last column: wins, margin "
             "in points (90% interval):", "",
             "| recipe | tau_c (ranking) | inherited / alone (learning) | searched arch beats hand design |",
             "|---|---|---|---|"]
    for r in figures["recipes"]:
        name, m = f"`{r['recipe']}`", margins.get(r["recipe"])
        if r["recipe"] == default:
            name, m = f"{name} (default)", margins.get(search["variant"], m)
        lines.append(f"| {name} | {mean_sd(r['tau_c'])} | {mean_sd(learning[r['recipe']]['ratios'])} | {beats(m)} |")
    if st := figures.get("design_standing"):
        lines += ["", f"The better hand design ({st['design']}, {st['top1']:.1f} over {st['seeds']} training seeds) "
                      f"is above {st['above']} of the {st['archs']} window archs ({st['range'][0]:.1f}-"
                      f"{st['range'][1]:.1f})."]
    if search["variant"] in margins and default in margins:
        n, grid_n = search["larger"]["holdout_images"], search["stored"]["holdout_images"]
        tau_c = next((v["tau_c"] for v in figures["variants"] if (v["recipe"], v["measure"], v["holdout_images"])
                      == (default, "top1", n)), [])
        lines += ["", f"The default's search scores on {n:,} held-out images (tau_c {mean_sd(tau_c)}); on the "
                      f"grid's {grid_n:,}: {beats(margins[default])}."]
    return "\n".join([SUMMARY[0], *lines, SUMMARY[1]])


def write_docs(figures, results_md, readme, check):
    """RESULTS.md, and the README's summary between the SUMMARY markers, as the records give them;
    with `check`, compare instead and raise UserError naming what is stale."""
    with open(readme) as f:
        text = f.read()
    if SUMMARY[0] not in text or SUMMARY[1] not in text:
        raise cli.UserError(f"{readme} has no summary markers ({SUMMARY[0]} ... {SUMMARY[1]})")
    head, rest = text.split(SUMMARY[0], 1)
    new_readme = head + summary(figures) + rest.split(SUMMARY[1], 1)[1]
    stale = []
    for path, new in ((results_md, figures["text"]), (readme, new_readme)):
        old = open(path).read() if os.path.exists(path) else None
        if old != new:
            if check:
                stale.append(path)
            else:
                with open(path, "w") as f:
                    f.write(new)
    if stale:
        raise cli.UserError(f"{' and '.join(stale)} differ from what results/ gives; run python experiment.py "
                              f"table --markdown --write {results_md}")

