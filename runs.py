"""
The plumbing of a run, so that train.py and search.py can read as the method: processes
(env-based DDP), one live run per output folder, checkpoints that load no code, the training
run's state (save, resume) and optimiser; experiment.py's jobs, each leaving a JSON record. What
a run reports (progress lines, log.jsonl, curves.png) is record.py's. Nothing here is ViTAS itself.
"""
import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import errno
import fcntl
import json
import math
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import vitas
from cli import UserError, fmt_time

# -----------------------------------------------------------------------------
# Processes (env-based: torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)

GROUP_TIMEOUT = None    # --timeout of the run that made the process group


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout: float = None       # seconds a collective may wait (--timeout; None: torch's default)

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


def seed_everything(seed):
    """torch (CPU and CUDA), numpy and random from `seed`, the same on every rank: the model is
    initialised alike everywhere (seed_rank then sets each rank apart)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def seed_rank(seed, rank):
    """Each rank its own random stream from here on, for what it does apart: augmentation in this
    process, stochastic depth, MixUp/CutMix (in loader workers an image has its own: data.SeededItems). A
    rank r > 0 is reseeded from (seed, r); rank 0 keeps the stream seed_everything gave it, so a
    one-process run is unchanged. The archs drawn stay shared: the sampler seeds them by (seed, step)."""
    if rank > 0:
        seed_everything(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


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


def setup_distributed(device="auto", timeout=None):
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
    global GROUP_TIMEOUT
    if world > 1 and not dist.is_initialized():     # a run inside a run (a search's trainings alone) keeps it
        GROUP_TIMEOUT = timeout
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                **({} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}))
    return Dist(rank, world, local_rank, dev, GROUP_TIMEOUT)


@contextlib.contextmanager
def collectives_named(d, where="set-up"):
    """A collective that waits past --timeout becomes one line naming this rank and where it stood:
    the step of the run set on the yielded namespace, else `where`. gloo raises; under nccl torch's
    watchdog ends the process with its own message, naming the collective instead."""
    at = argparse.Namespace(run=None)
    try:
        yield at
    except RuntimeError as e:
        if d.world == 1 or "timed out" not in str(e).lower():
            raise
        where = where if at.run is None else f"step {at.run.step + 1}"
        waited = "torch's default timeout" if d.timeout is None else f"--timeout {d.timeout:g} s"
        raise UserError(f"rank {d.rank} of {d.world}: a collective waited past {waited} at {where}: "
                        f"another rank stopped or hangs (its output says why); the last checkpoint is kept, "
                        f"the same command resumes") from None


def cleanup_distributed(barrier=False):
    """Tear the process group down; after a clean run every rank waits for the others first, so
    none exits while a peer still talks to it (gloo aborts a process whose peer vanished)."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def distributed(model, d, slices):
    """The model DDP-wrapped where there are several processes (itself otherwise). `slices`: each
    step trains a slice of it (a super-transformer), so some parameters get no gradient."""
    if d.world == 1:
        return model
    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None, find_unused_parameters=slices)


def run_command(fn, args):
    """Run fn(args) as a command: bad input is one line on stderr and exit code 2, and the
    process group is torn down on every path."""
    ok = False
    try:
        fn(args)
        ok = True
    except UserError as e:
        # a loader worker's error holds its frames in a reference cycle; freed later by the garbage
        # collector, DataLoader's shutdown finds its queues closed and waits 5 s per worker
        traceback.clear_frames(e.__traceback__)
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        cleanup_distributed(barrier=ok)


def amp_context(device, enabled):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


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


def write_json(path, obj, lines=False):
    """Atomic: a crash mid-write leaves the previous file whole. lines: one JSON object per line."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        if lines:
            f.writelines(json.dumps(r) + "\n" for r in obj)
        else:
            json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def read_if_every_rank_sees(path, d):
    """The JSON at `path` where every rank sees it, else None: every rank takes the same decision,
    even where shared storage lags."""
    seen = float(os.path.exists(path))
    if d.world > 1:
        seen = d.all_reduce(torch.tensor(seen)).item() / d.world
    if seen < 1.0:
        return None
    with open(path) as f:
        return json.load(f)


def provenance():
    """Where a record comes from: the commit of this code and whether its tree had uncommitted
    changes (git; "unknown" and None outside a checkout), the torch version and the date. Kept in
    every record the tools write, never in the key that finds a stored record."""
    def git(*argv):
        try:
            out = subprocess.run(["git", *argv], cwd=os.path.dirname(os.path.abspath(__file__)),
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    changed = None if commit is None else bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"commit": commit or "unknown", "uncommitted_changes": changed, "torch": str(torch.__version__),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


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
    """A vitas checkpoint (`state` and its format), written by save_atomic."""
    save_atomic(path, {**state, "format": CHECKPOINT_FORMAT})


def save_atomic(path, obj):
    """torch.save, atomic: a crash or a full disk mid-write leaves the previous file intact (a failed
    write is one line: UserError)."""
    tmp = f"{path}.tmp"
    try:
        torch.save(obj, tmp)
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


def supernet_of(ck):
    """The super-transformer of a super-transformer checkpoint, with its weights, and the sides it
    was trained on (left and right with bilateral sharing)."""
    if ck.get("mode") != "super":
        raise UserError("a retrain checkpoint holds one plain ViT; a super-transformer checkpoint is needed here")
    supernet = vitas.SuperTransformer(vitas.SearchSpace(**ck["space"]))
    supernet.load_state_dict(ck["model"])
    return supernet, vitas.SHARINGS[ck["args"].get("sharing", "bilateral")]


# -----------------------------------------------------------------------------
# A training run: its state, its checkpoint, its optimiser


@dataclasses.dataclass
class Run:
    """A training run: its parts, what its checkpoint holds, and where it stands. The sampler says
    what the run is (ArchSampler: a super-transformer; FixedArch: a retrain of one arch) and what
    of it the checkpoint keeps (its mode, arch and state_dict())."""
    args: argparse.Namespace
    d: Dist
    space: vitas.SearchSpace
    model: torch.nn.Module
    ddp: torch.nn.Module         # the model, DDP-wrapped where distributed
    optimizer: torch.optim.Optimizer
    schedule: object
    sampler: object              # train.ArchSampler, or train.FixedArch for a retrain
    sides: tuple                 # the slices each drawn arch is trained on (None: a plain ViT)
    data: object                 # data.Datasets
    train_loader: object         # data.train_loader's, for every epoch
    val_loader: object           # the reported archs' evaluation, sharded across ranks
    mix: object                  # batch MixUp/CutMix, or None
    steps_per_epoch: int
    step: int = 0
    sums: dict = None            # this epoch's running sums (kept in the checkpoint)
    record: dict = None          # the last epoch's log record
    seen: int = 0                # images this process trained on this epoch, and since when
    t_epoch: float = 0.0
    waited: float = 0.0          # this epoch's seconds waiting for the loader (record.progress)
    ready: float = 0.0           # when the last step ended (the loader's wait begins)
    t_drawn: float = dataclasses.field(default_factory=time.time)   # curves.png last drawn (record.write_record)
    provenance: dict = None      # runs.provenance(), taken once on rank 0: in the checkpoint and every log line

    def __post_init__(self):
        if self.d.main:
            self.provenance = provenance()

    @property
    def path(self):
        return os.path.join(self.args.out, "checkpoint.pt")

    @property
    def total_steps(self):
        return self.args.epochs * self.steps_per_epoch

    def arch_dict(self):
        return None if self.sampler.arch is None else self.sampler.arch.to_dict()

    def save(self, path=None):
        """The checkpoint (every rank calls it; rank 0 writes), to `path` or the run's own."""
        states = [None] * self.d.world
        if self.d.world > 1:   # every rank's RNG (augmentation, drop path) so a resume is exact
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if self.d.main:
            save_checkpoint(path or self.path, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "step": self.step,
                "epoch": self.step // self.steps_per_epoch, "steps_per_epoch": self.steps_per_epoch,
                "epoch_sums": self.sums, "record": self.record,
                "rng": states, "args": vars(self.args), "space": self.space.to_dict(), "world": self.d.world,
                "classes": self.data.classes,
                **self.sampler.state_dict(), "arch": self.arch_dict(), "mode": self.sampler.mode,
                "provenance": self.provenance})

    def resume(self, ck):
        """Continue from `ck`, the checkpoint in --out (None: there is none), refusing one of another run."""
        if ck is None:
            return
        if ck.get("arch") != self.arch_dict():
            raise UserError(f"{self.path} belongs to another run (arch differs); use another --out or delete it")
        if ck["space"] != self.space.to_dict():
            raise UserError(f"{self.path} was trained on another search space (--space, --patch-sizes or the data's "
                            f"classes differ); resume with the same flags, or use another --out")
        self.check_world(ck)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.schedule.load_state_dict(ck["schedule"])
        self.step, self.sums, self.record = ck["step"], ck["epoch_sums"], ck["record"]
        self.sampler.load_state_dict(ck)
        if self.d.rank < len(ck["rng"]):   # a rank the checkpoint had resumes its own stream exactly
            set_rng_state(ck["rng"][self.d.rank])
        self.d.log(f"resumed from {self.path} at step {self.step} (epoch {self.step // self.steps_per_epoch})")

    def check_world(self, ck):
        """A resume under another number of processes goes on only where the global batch and the
        steps per epoch stay as they were, with one line saying so and that it is not bit-exact
        (each rank's share of the data and its random stream differ); else it stops naming both."""
        world, batch = ck.get("world", 1), ck["args"]["batch_size"] * ck["args"].get("accum_steps", 1)
        if world == self.d.world:
            return
        per, k = self.args.batch_size * self.args.accum_steps, self.args.accum_steps   # a step's images per process
        was, now = f"{world} process(es) x batch {batch}", f"{self.d.world} x {per}"
        steps = ck.get("steps_per_epoch", self.steps_per_epoch)
        if batch * world != per * self.d.world or steps != self.steps_per_epoch:
            fix = (f"--batch-size {batch * world // (self.d.world * k)}" if batch * world % (self.d.world * k) == 0
                   else f"a process count that divides the global batch {batch * world}")
            raise UserError(f"{self.path} was trained by {was} (global batch {batch * world}), this run has {now}: "
                            f"resume with {world} process(es), or keep the global batch with {fix}")
        self.d.log(f"note: resuming on {now} where {was} trained: the global batch {batch * world} is kept, "
                   f"but the resume is not bit-exact (each rank's share of the data and random stream differ)")


def optimiser(model, args, steps_per_epoch):
    """AdamW without weight decay on norms, biases, class tokens and position embeddings (timm's
    rule), and its schedule: linear warm-up for --warmup-epochs, then a cosine down to --min-lr."""
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        args.warmup_epochs * steps_per_epoch, args.epochs * steps_per_epoch, args.min_lr / args.lr))
    return optimizer, schedule


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
# Jobs and their records (experiment.py): a finished job leaves a JSON record; a job with one is not run again


def record_path(results, kind, key):
    return os.path.join(results, kind, f"{key}.json")


def read_record(path):
    with open(path) as f:
        return json.load(f)


def execute(job, runner):
    """Run one job with one thread, its output in a log file beside its scratch; write its record
    (runner(job), with the CPU-minutes it took and the provenance) atomically. Returns the record's
    path and the seconds taken."""
    t, cpu, threads = time.time(), time.process_time(), torch.get_num_threads()
    os.makedirs(job["scratch"], exist_ok=True)
    torch.set_num_threads(1)
    try:
        with open(os.path.join(job["scratch"], "job.log"), "a") as log, contextlib.redirect_stdout(log):
            record = runner(job)
    finally:
        torch.set_num_threads(threads)
    record["cpu_minutes"] = (time.process_time() - cpu) / 60
    record["provenance"] = provenance()      # never in the key (the record's path) that finds it
    os.makedirs(os.path.dirname(job["path"]), exist_ok=True)
    write_json(job["path"], record)
    return job["path"], time.time() - t


def run_jobs(jobs, workers, run):
    """Run the jobs whose record (job["path"]) is missing through `run` (a module-level function,
    job -> (record path, seconds), that calls execute()): in `workers` processes (0: in this one),
    one thread each; a line per finished job with the time left."""
    todo = [j for j in jobs if not os.path.exists(j["path"])]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} jobs already have a record; running {len(todo)} "
          f"({'in this process' if workers == 0 else f'{workers} worker processes, one thread each'})", flush=True)
    if not todo:
        return
    t0 = time.time()

    def done(i, path, seconds):
        eta = (time.time() - t0) / i * (len(todo) - i)
        print(f"[{i}/{len(todo)}] {os.path.relpath(path)} in {fmt_time(seconds)}, "
              f"ETA {fmt_time(eta)}", flush=True)

    if workers == 0:
        for i, job in enumerate(todo, 1):
            done(i, *run(job))
        return
    os.environ["OMP_NUM_THREADS"] = "1"   # inherited by the workers before they import torch
    with multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        for i, (path, seconds) in enumerate(pool.imap_unordered(run, todo), 1):
            done(i, path, seconds)
