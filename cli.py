"""
The command lines of train.py and search.py: every flag with its default and range, checked when
parsed, and bad input as one line naming the problem and the fix (UserError, Parser). The recipe
tables the flags describe live in train.py and are passed in, so imports go one way.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import numbers
import os
import shlex
import sys
from decimal import Decimal, InvalidOperation

import vitas

# -----------------------------------------------------------------------------
# One-line errors and range-checked numbers


class UserError(ValueError):
    """Bad input from the user: printed as one clear line, no traceback. Only this is caught so:
    any other exception is a bug and keeps its traceback."""


@contextlib.contextmanager
def users_to_fix():
    """vitas's ValueError (a window or a space the user asked for that cannot be) as one line."""
    try:
        yield
    except ValueError as e:
        raise UserError(str(e)) from None


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


def load_space(spec):
    """A preset's name, or a JSON file holding every field of a search space (SearchSpace.to_dict's
    form; `train.py --space tiny --print-space` writes one to start from). UserError names what is wrong."""
    if spec in vitas.PRESETS:
        return vitas.SearchSpace.preset(spec)
    try:
        with open(spec) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise UserError(f"--space {spec}: neither a preset ({', '.join(sorted(vitas.PRESETS))}) nor a file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"--space {spec}: not a readable JSON file ({e})") from None
    names = [f.name for f in dataclasses.fields(vitas.SearchSpace)]
    if not isinstance(d, dict):
        raise UserError(f"--space {spec}: expected a JSON object with the fields {', '.join(names)}")
    unknown, missing = sorted(set(d) - set(names)), [n for n in names if n not in d]
    if unknown or missing:
        wrong = ([f"unknown field(s) {', '.join(unknown)}"] * bool(unknown)
                 + [f"missing {', '.join(missing)}"] * bool(missing))
        raise UserError(f"--space {spec}: {'; '.join(wrong)} (a search space has exactly: {', '.join(names)})")
    try:
        return vitas.SearchSpace(**d)
    except ValueError as e:
        raise UserError(f"--space {spec}: {e}") from None


def space_arg(text):
    """--space, checked when parsed; the run loads it again (cli.run_space)."""
    try:
        load_space(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--space {text}: ")) from None
    return text


def check_flops_window(ap, args):
    if args.flops_min is not None and args.flops_max is not None and args.flops_min > args.flops_max:
        ap.error(f"the FLOPs window is empty: --flops-min {args.flops_min:,} > --flops-max {args.flops_max:,}")


def data_seed(args):
    """The seed of the synthetic data and of the held-out split: --data-seed, or else --seed."""
    return args.seed if getattr(args, "data_seed", None) is None else args.data_seed


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def throughput_measure_flags(group):
    """The flags of how throughput is measured, for train.py's and search.py's throughput budgets."""
    group.add_argument("--throughput-batch", type=number_arg(int, 1), default=None,
                       help="batch of throughput measurements (default 16 on CPU, 128 on CUDA)")
    group.add_argument("--throughput-amp", action="store_true", help="measure throughput under bf16 autocast (CUDA)")


# -----------------------------------------------------------------------------
# train.py's flags

NAT, POS, NONNEG = number_arg(int, 0), number_arg(int, 1), number_arg(float, 0)


def default_text(book, key):
    """How --help states a flag's default in each mode."""
    sup = {name: recipe.get(key, book.regularisation["super"].get(key)) for name, recipe in book.recipes.items()}
    sup = f"{sup[book.default]}" + "".join(f", --recipe {n}: {v}" for n, v in sup.items()
                                           if n != book.default and v != sup[book.default])
    return (f"default: {sup}" if key in book.keys
            else f"default: super-transformer {sup}; retrain {book.regularisation['retrain'][key]}")


def sandwich_arg(text):
    """--sandwich: 'off' or the number N >= 0 of drawn networks beside the largest and the smallest."""
    return None if text == "off" else number_arg(int, 0)(text)


def train_parser(doc, book):
    """train.py's parser; `book`: train.py's recipe tables (train.RecipeBook)."""
    ap = Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_flags in (run_flags, sampling_flags, recipe_flags, training_flags):
        add_flags(ap, book)
    return ap


def run_flags(ap, book):
    nat, pos = NAT, POS
    g = ap.add_argument_group("run")
    g.add_argument("--space", default=None, type=space_arg, metavar="PRESET|FILE.json",
                   help=f"search space: a preset ({', '.join(sorted(vitas.PRESETS))}) or a JSON file with every field "
                        f"(default tiny; a resume, --init-from or a search's --arch file: theirs)")
    g.add_argument("--print-space", action="store_true",
                   help="print --space as JSON and exit: a start for a space of one's own")
    g.add_argument("--out", default="runs/super", help="output folder: checkpoint.pt, log.jsonl (default runs/super)")
    device_flags(g)
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
    g.add_argument("--holdout", type=holdout_arg, default=None,
                   help="training images kept out for the search to score archs on: a fraction below 1 or a count "
                        "(default 0.1: 600 of the 6,000 synthetic images, so one image is 0.17 points; a retrain, "
                        "--arch, holds out none)")
    g.add_argument("--synthetic-size", type=number_arg(int, 10), default=6000,
                   help="synthetic training images (val: a fifth, at least 100)")
    g.add_argument("--synthetic-classes", type=number_arg(int, 2), default=10)
    g.add_argument("--workers", type=nat, default=None,
                   help="data-loader workers per process, kept across epochs (default: 0 on synthetic data, "
                        "held in memory; else the process's share of the cores less one, at most 8)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="an image file that cannot be read is replaced by the next one and counted (log.jsonl: "
                        "bad_images) instead of stopping the run with one line naming it")
    g.add_argument("--eval-batch-size", type=pos, default=256)
    g.add_argument("--eval-limit", type=pos, default=None, help="evaluate on the first N val images only")


def sampling_flags(ap, book):
    nat, nonneg = NAT, NONNEG
    g = ap.add_argument_group("super-transformer sampling and recipe")
    g.add_argument("--recipe", default=book.default, choices=sorted(book.recipes),
                   help="; ".join(f"{name}{' (default)' if name == book.default else ''}: {note}"
                                  for name, note in book.notes.items())
                        + ". Cyclic sharing, the sandwich, distillation and the other samplers (beyond v1) are the "
                          "flags below; they override the recipe.")
    g.add_argument("--uniform-epochs", type=nat, default=2,
                   help="epochs of uniform sampling before the learned identity probability")
    g.add_argument("--patch-sizes", type=number_arg(int, 1), nargs="+", default=None, metavar="P",
                   help="train only these patch sizes of the space (default: all). One super-transformer per patch "
                        "size, each on its share of the steps, splits the space as few-shot NAS does: no block "
                        "weights shared between patch sizes (beyond the paper)")
    g.add_argument("--flops-min", type=count_arg, default=None,
                   help="FLOPs (MACs) window the learned identity probability aims at, e.g. 0.9G")
    g.add_argument("--flops-max", type=count_arg, default=None,
                   help="e.g. 1.1G; without a window sampling stays uniform")
    g.add_argument("--throughput-min", type=number_arg(float, 0, lo_open=True), default=None, metavar="IMG/S",
                   help="instead of a FLOPs window: aim sampling at networks doing at least this many images/s on this "
                        "device (exported ViT, eval); a latency model is fitted to archs measured at start-up")
    g.add_argument("--throughput-max", type=number_arg(float, 0, lo_open=True), default=None, metavar="IMG/S",
                   help="upper end of the throughput window")
    throughput_measure_flags(g)
    g.add_argument("--calibration-seconds", type=nonneg, default=30,
                   help="about how long the throughput calibration measures "
                        "(at least 12 archs, at most 64; default 30)")


def recipe_flags(ap, book):
    g = ap.add_argument_group("super-transformer recipe: flags that override --recipe")
    g.add_argument("--sharing", default=None, choices=sorted(vitas.SHARINGS),
                   help="left: the first channels; bilateral (v1): left and right slices each step, each with its own "
                        "loss; cyclic (v2, one pass a step): embedding channels as a ring, each width its own window. "
                        + default_text(book, "sharing"))
    g.add_argument("--bilateral-loss", default=None, choices=["two", "summed"],
                   help="with bilateral sharing: two (a loss per side, gradients summed: the paper's text) or summed "
                        "(one loss on the summed left + right logits, as the authors' code does). "
                        + default_text(book, "bilateral_loss"))
    g.add_argument("--sandwich", type=sandwich_arg, default=None, metavar="N|off",
                   help="beyond v1 (BigNAS): each step trains the largest and the smallest network (inside the FLOPs "
                        "window) and N drawn ones, gradients summed before one optimizer step. "
                        + default_text(book, "sandwich"))
    g.add_argument("--distill", default=None, action=argparse.BooleanOptionalAction,
                   help="beyond v1 (in-place distillation): the sandwich's other networks learn from the largest one's "
                        "soft predictions. " + default_text(book, "distill"))
    g.add_argument("--identity-shift", default=None, choices=book.identity_shifts,
                   help="v2's remedy for identity placements that give the same network. train (v2, our reading): "
                        "every drawn network has its identity blocks moved behind its real ones, so one network is one "
                        "path; block k then trains only when the depth is at least k. search (beyond the paper): "
                        "training draws identities anywhere (every block position trained alike), scoring and "
                        "searching move them behind. off (v1): identities anywhere, also when searching. "
                        + default_text(book, "identity_shift"))
    g.add_argument("--sampling", default=None, choices=book.samplings,
                   help="how the learned phase draws a network. binomial (the paper's): each block identity with the "
                        "learned identity probability, so depth is binomial and deep networks rare. depth-balanced "
                        "(beyond the paper): the depth uniform among the depths the FLOPs window admits. stratified "
                        "(beyond the paper): a (patch size, depth) cell of the window uniformly, so every patch size "
                        "and depth is trained alike. Both place the real blocks at random positions and draw widths "
                        "uniformly inside the window. "
                        + default_text(book, "sampling"))


def training_flags(ap, book):
    pos, nonneg = POS, NONNEG
    g = ap.add_argument_group("retrain")
    g.add_argument("--arch", default=None, help="arch JSON (search.py's best_arch.json): retrain it as a plain ViT")
    g.add_argument("--init-from", default=None, help="super-transformer checkpoint to inherit the arch's weights from")
    g = ap.add_argument_group("evaluate")
    g.add_argument("--eval", default=None, metavar="CKPT",
                   help="evaluate a checkpoint without training: top-1/top-5/loss on val and on the held-out split, "
                        "written to eval.json beside it (a super-transformer checkpoint needs --arch: eval-ARCH.json)")
    g.add_argument("--export", default=None, metavar="CKPT",
                   help="write a checkpoint's ViT to ship, beside it: export/ (a super-transformer's --arch slice: "
                        "export-ARCH/) with weights.pt and vit.json (arch, space, class names, eval transform); "
                        "vitas.load(folder) reads it back")
    g.add_argument("--side", default=None, choices=["left", "right", "cyclic"],
                   help="--export of a slice: which side of the super-transformer (default: the first it trained)")
    g = ap.add_argument_group("optimisation, augmentation, regularisation")
    g.add_argument("--batch-size", type=pos, default=64, help="per process and micro-batch")
    g.add_argument("--accum-steps", type=pos, default=1, metavar="K",
                   help="micro-batches per optimizer step, one arch drawn for all K and the gradients synced on the "
                        "last: the effective batch is --batch-size x processes x K (default 1)")
    g.add_argument("--lr", type=number_arg(float, 0, lo_open=True), default=2e-3)
    g.add_argument("--min-lr", type=nonneg, default=1e-5, help="end of the cosine (at most --lr)")
    g.add_argument("--weight-decay", type=nonneg, default=0.05)
    g.add_argument("--warmup-epochs", type=nonneg, default=1)
    regularisation_flags(g, lambda key: default_text(book, key))
    g.add_argument("--clip-grad", type=nonneg, default=5.0, help="gradient-norm clip (0: off)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (for CUDA; slower on most CPUs)")


def regularisation_flags(group, default_text):
    """The augmentation and regularisation flags (ALONE_FLAGS: also what archs trained alone take)."""
    nonneg = NONNEG
    group.add_argument("--smoothing", type=number_arg(float, 0, 1, hi_open=True), default=None,
                       help="label smoothing; " + default_text("smoothing"))
    group.add_argument("--mixup", type=nonneg, default=None,
                       help="MixUp alpha (DeiT: 0.8; 0: off); " + default_text("mixup"))
    group.add_argument("--cutmix", type=nonneg, default=None,
                       help="CutMix alpha (DeiT: 1.0; 0: off); " + default_text("cutmix"))
    group.add_argument("--randaug", type=number_arg(int, 0, 30), default=None,
                       help="RandAugment magnitude on real data (0: off); " + default_text("randaug"))
    group.add_argument("--reprob", type=number_arg(float, 0, 1), default=None,
                       help="random-erasing probability on real data; " + default_text("reprob"))
    group.add_argument("--drop-path", type=number_arg(float, 0, 1, hi_open=True), default=None,
                       help="stochastic depth (DeiT retrain: 0.1); " + default_text("drop_path"))


def parse_train_args(ap, argv=None):
    """train.py's flags, the checks between them made at parse time."""
    args = ap.parse_args(argv)
    if args.min_lr > args.lr:
        ap.error(f"argument --min-lr: {args.min_lr:g} exceeds --lr {args.lr:g}; "
                 f"expected at most the peak learning rate")
    check_flops_window(ap, args)
    if args.workers is None and not (args.eval or args.export):    # those take the checkpoint's data's
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        share = cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1))                           # cores it may use
        args.workers = 0 if args.data == "synthetic" else min(8, max(1, share - 1))
    if args.print_space:                       # like --help: print and exit
        print(json.dumps(load_space(args.space or "tiny").to_dict()))
        sys.exit(0)
    throughput = args.throughput_min is not None or args.throughput_max is not None
    if throughput and (args.flops_min is not None or args.flops_max is not None):
        ap.error("give a FLOPs window (--flops-min/--flops-max) or a throughput window "
                 "(--throughput-min/--throughput-max), not both")
    if (throughput and args.throughput_min is not None and args.throughput_max is not None
            and args.throughput_min > args.throughput_max):
        ap.error(f"the throughput window is empty: --throughput-min {args.throughput_min:g} > "
                 f"--throughput-max {args.throughput_max:g}")
    return args


# -----------------------------------------------------------------------------
# search.py's flags


# train.py flags a user may pass through to every arch trained alone (the rest follows the checkpoint)
ALONE_FLAGS = ("--smoothing", "--mixup", "--cutmix", "--randaug", "--reprob", "--drop-path")


def retrain_flags_arg(text):
    """--retrain-flags: train.py augmentation and regularisation flags, checked now by the flag
    definitions train.py uses (regularisation_flags), so a typo fails before any search."""
    tokens = shlex.split(text)
    unknown = [t for t in tokens if t.startswith("-") and t.split("=")[0] not in ALONE_FLAGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{' '.join(unknown)} cannot be passed to archs trained alone; expected only "
                                         f"{', '.join(ALONE_FLAGS)} with their values")

    def refuse(message):   # train.py's parser would exit; here its message names --retrain-flags
        raise argparse.ArgumentTypeError(f"{text!r}: {message}")

    probe = Parser()
    probe.error = refuse
    regularisation_flags(probe, lambda key: "")
    probe.parse_args(tokens)
    return tokens


def rank_k_arg(text):
    k = number_arg(int, 0)(text)
    if k == 1:
        raise argparse.ArgumentTypeError("1: a rank agreement needs at least 2 archs; "
                                         "expected 0 (off) or a whole number >= 2")
    return k


def device_flags(g):
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    g.add_argument("--timeout", type=number_arg(float, 1, 7 * 86400), default=None, metavar="SECONDS",
                   help="under torchrun: a collective waiting longer ends the run, one line naming the rank and "
                        "step (default: torch's, 30 minutes under gloo, 10 under nccl)")


# The search's default on the synthetic data: 5,400 generated held-out images beside the 600 of the
# quick start's split, a standard error of top-1 of ~0.5 points at 80% instead of ~1.6 (issue 41).
HOLDOUT_EXTRA = 5400


def resolve_holdout_extra(args, ck_args):
    """search.py's --holdout-extra when none is given: a search resumed in --out keeps the images it
    scored on (its state.json; 0 where it predates the flag), a new one takes HOLDOUT_EXTRA generated
    images on the synthetic data (the checkpoint's, `ck_args`) and none on any other."""
    if args.holdout_extra is None:
        try:
            with open(os.path.join(args.out, "state.json")) as f:
                args.holdout_extra = json.load(f).get("holdout_extra", 0)
        except (OSError, json.JSONDecodeError):     # no search to resume (a broken one: its resume says so)
            args.holdout_extra = HOLDOUT_EXTRA if ck_args.get("data", "synthetic") == "synthetic" else 0


def search_parser(doc, algos, fitness):
    """search.py's parser; `algos` and `fitness` its algorithms and fitness measures."""
    nat, pos = number_arg(int, 0), number_arg(int, 1)
    ap = Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("search")
    g.add_argument("--ckpt", default=None,
                   help="super-transformer checkpoint.pt from train.py (space, data and held-out split come from it); "
                        "required unless --rank-check runs alone on a search folder")
    g.add_argument("--flops-min", type=count_arg, default=None,
                   help="e.g. 0.9G, 900M or a plain number (MACs); required with --ckpt")
    g.add_argument("--flops-max", type=count_arg, default=None, help="e.g. 1.1G; required with --ckpt")
    g.add_argument("--params-max", type=count_arg, default=None, help="optional parameter budget, e.g. 6M")
    g.add_argument("--throughput-min", type=number_arg(float, 0, lo_open=True), default=None, metavar="IMG/S",
                   help="optional speed budget: candidates whose exported ViT does fewer images/s on this device "
                        "(eval, no grad) are rejected before evaluation; each arch measured once (candidates.jsonl "
                        "gains 'throughput', pareto_throughput.json is written)")
    throughput_measure_flags(g)
    g.add_argument("--algo", default="evolution", choices=algos)
    g.add_argument("--compare", action="store_true",
                   help="also run the other algorithm with the same number of evaluations")
    g.add_argument("--population", type=number_arg(int, 2), default=50)
    g.add_argument("--generations", type=pos, default=20)
    g.add_argument("--parents", type=number_arg(int, 2), default=None,
                   help="top-k of all evaluated archs that breed "
                        "(<= population; default 10, or the population if smaller)")
    g.add_argument("--mutate-prob", type=number_arg(float, 0, 1), default=0.1,
                   help="probability each gene is re-drawn in a mutation")
    g.add_argument("--fitness", default="top1", choices=fitness,
                   help="top1: held-out top-1 of the inherited weights (the paper's); loss: minus their held-out "
                        "cross-entropy; prob: their mean probability of the true class (loss and prob: finer on a "
                        "small held-out split; beyond the paper). All three are recorded.")
    g.add_argument("--eval-size", type=pos, default=None,
                   help="score on the first N held-out images (default: all of them, the split train.py --holdout "
                        "sets and --holdout-extra's generated images after it)")
    g.add_argument("--holdout-extra", type=nat, default=None, metavar="N",
                   help=f"synthetic data only: score on N more generated images beside the held-out split (their "
                        f"own seed; the training images unchanged; beyond the paper). Default {HOLDOUT_EXTRA:,} on "
                        f"the synthetic data (6,000 images with the quick start's 600: ranks better than the 600 "
                        f"alone, at ten times the cost, RESULTS.md), 0 on any other. Own data: train.py --holdout")
    g.add_argument("--batch-size", type=pos, default=256, help="evaluation batch per process")
    g.add_argument("--seed", type=nat, default=0)
    g.add_argument("--out", default="runs/search", help="output folder; re-running the same command resumes")
    device_flags(g)
    after_search_flags(ap)
    return ap


def after_search_flags(ap):
    """The retrain of the best arch beside hand designs, and the rank check."""
    nat, pos = number_arg(int, 0), number_arg(int, 1)
    g = ap.add_argument_group("after the search")
    g.add_argument("--retrain-epochs", type=nat, default=0,
                   help="retrain the best arch and two hand-designed baselines of the nearest FLOPs (uniform blocks; "
                        "DeiT proportions) this many epochs each and compare (0: off)")
    g.add_argument("--rank-check", type=rank_k_arg, default=0, metavar="K",
                   help="train K archs of the window alone, spread over its (patch size, depth) cells by a seeded draw "
                        "(not chosen by the fitness under test), and report how well the inherited weights rank them: "
                        "Kendall tau-b, the reference's reliability and the oracle bound tau*, tau corrected for the "
                        "reference's noise, bootstrap intervals, FLOPs/params/depth as floors (rank_check.json). Runs "
                        "after the search, or alone with --out a finished search folder. Finished trainings are "
                        "reused. (0: off)")
    g.add_argument("--rank-epochs", type=pos, default=20,
                   help="epochs each rank-check arch is trained alone (default 20)")
    g.add_argument("--rank-seeds", type=pos, default=2,
                   help="training seeds each rank-check arch is trained alone with (default 2): tau is taken against "
                        "their mean, and their agreement measures the reference's reliability (1: reliability unknown)")
    g.add_argument("--retrain-flags", type=retrain_flags_arg, default=[], metavar="'FLAGS'",
                   help="train.py augmentation and regularisation flags for every arch trained alone (rank check, "
                        "--retrain-epochs), e.g. '--randaug 0 --reprob 0' (default: retrain mode's own: smoothing 0.1, "
                        "RandAugment 9 and erasing 0.25 on real images); recorded in search.json and rank_check.json")
    g.add_argument("--retrain-dir", default=None,
                   help="where archs trained alone go (default OUT/retrain, a folder per arch and settings); "
                        "share it between searches to reuse them")


def parse_search_args(ap, argv=None):
    """search.py's flags, the checks between them made at parse time."""
    args = ap.parse_args(argv)
    if args.parents is None:
        args.parents = min(10, args.population)
    if args.parents > args.population:
        ap.error(f"argument --parents: {args.parents} exceeds --population {args.population}; "
                 f"expected at most the population")
    if args.ckpt is not None and (args.flops_min is None or args.flops_max is None):
        ap.error("--ckpt needs the FLOPs window too: give --flops-min and --flops-max (e.g. 2M and 4M)")
    check_flops_window(ap, args)
    return args


# -----------------------------------------------------------------------------
# The run's search space, the recipe's flags, and the flags of an arch trained alone


def run_space(args, init, resumed, log):
    """The run's search space: for --init-from (`init`, its checkpoint) the space of the checkpoint
    whose weights are inherited (an explicit --space that differs is refused); else --space, or left
    out: the space of the checkpoint in --out (`resumed`), of the --arch file (search.py writes it
    there) or tiny. --patch-sizes keeps only those patch sizes of it."""
    if init is not None:
        name = init["args"].get("space")
        if args.space is not None and args.space != name:
            raise UserError(f"--space {args.space} differs from the space of --init-from {args.init_from} ({name}); "
                            f"leave --space out: the checkpoint's space is used")
        args.space = name
        log(f"search space {name} of {args.init_from}")
        return vitas.SearchSpace(**init["space"])
    if args.space is not None:
        space, where = load_space(args.space), args.space
    elif resumed is not None:
        args.space = resumed["args"].get("space")
        space, where = vitas.SearchSpace(**resumed["space"]), f"{args.space} of the checkpoint in {args.out}"
    elif args.arch and (found := arch_file_space(args.arch)) is not None:
        space, where = found, f"of {args.arch}"
    else:
        args.space = "tiny"
        space, where = load_space("tiny"), "tiny"
    if args.patch_sizes is None:
        log(f"search space {where}")
        return space
    other = sorted(set(args.patch_sizes) - set(space.patch_sizes))
    if other:
        raise UserError(f"--patch-sizes {' '.join(map(str, other))}: not in space {where}, whose patch sizes "
                        f"are {' '.join(map(str, space.patch_sizes))}")
    patches = tuple(sorted(set(args.patch_sizes)))
    log(f"search space {where}, restricted to patch size(s) {' '.join(map(str, patches))}")
    return dataclasses.replace(space, patch_sizes=patches)


def arch_file_space(path):
    """The search space an arch file names (search.py's best_arch.json does), or None."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None               # the arch's own reading says what is wrong with it
    if not isinstance(d, dict) or not isinstance(d.get("space"), dict):
        return None
    try:
        return vitas.SearchSpace(**d["space"])
    except (TypeError, ValueError) as e:
        raise UserError(f"--arch {path}: its search space: {e}") from None


def resolve_recipe(args, book):
    """Fill the flags left unset from the recipe (super-transformer; `book`: train.py's recipe tables) and
    the mode's regularisation
    defaults, in place; a recipe flag (or --patch-sizes) given to a retrain, or --distill without the
    sandwich, is an error."""
    if args.init_from and not args.arch:
        raise UserError("--init-from inherits weights for a retrain: give the arch to retrain with --arch")
    retrain = args.arch is not None
    mode = "retrain" if retrain else "super"
    recipe = {} if retrain else book.recipes[args.recipe]
    if retrain:
        given = [k for k in (*book.keys, "patch_sizes") if getattr(args, k) is not None]
        if given:
            raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in given)} shape super-transformer training; "
                            f"a retrain (--arch) trains one network: leave them out")
    if args.holdout is None:   # the held-out images serve the search's fitness: a retrain needs none
        args.holdout = 0 if retrain else 0.1
    for key in book.regularisation[mode]:
        if getattr(args, key) is None:
            setattr(args, key, recipe.get(key, book.regularisation[mode][key]))
    if not retrain:
        for key in book.keys:
            if getattr(args, key) is None:
                setattr(args, key, recipe[key])
        if args.distill and args.sandwich is None:
            raise UserError("--distill needs the sandwich (--sandwich N): "
                            "the largest network of each step is the teacher")
    return args


def refuse_other_recipe(ck, args, path, book):
    """A super-transformer resumes only with the recipe it was trained with (a checkpoint from before
    a recipe key existed had v1's value)."""
    changed = [k for k in book.keys if ck["args"].get(k, book.recipes["v1"].get(k)) != getattr(args, k)]
    if changed:
        raise UserError(f"{path} was trained with other {', '.join('--' + k.replace('_', '-') for k in changed)}; "
                        f"resume with the same recipe, or use another --out")
