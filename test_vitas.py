"""Tests: python -m pytest -q test_vitas.py  (CPU, a few minutes on 2 cores); the fast core alone:
python -m pytest -q test_vitas.py -m "not slow" (pytest.ini registers the mark).

Sections, in the order of the code: (1) search space and arch records, (2) FLOPs and parameter counter,
(3) the plain ViT and the super-transformer, (4) sampling, (5) training loop, (6) run folders and
checkpoints, (7) search, (8) rank statistics and the rank check, (9) command lines and docs,
(10) experiments and RESULTS.md. Constants and the helpers several sections use come first."""
import argparse
import copy
import errno
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.flop_counter import FlopCounterMode

import bench
import cli
from cli import parse_count
import data
import experiment
import rankcheck
import record
import report
import runs
import search
from search import Evolution, crossover, mutate, pareto_front
import train
import vitas
from vitas import Arch, Block, SearchSpace


TINY = SearchSpace.preset("tiny")
BIG = SearchSpace.preset("vitas-1g")
VITAS_C = Arch(16, 230, (Block(3, 144, 720),) * 12 + (None,) * 4)
HERE = os.path.dirname(os.path.abspath(__file__))
# a few-second configuration of the synthetic default
WINDOW = ["--flops-min", "2M", "--flops-max", "4M"]
LO, HI = 2_000_000, 4_000_000                     # WINDOW's bounds as numbers
SMALL = ["--synthetic-size", "640", "--batch-size", "32", "--eval-limit", "128", "--log-every", "5", "--device", "cpu"]


def random_archs(space, n, seed=0):
    """Archs across identity probabilities (0, uniform 1/2, 0.8): identity blocks at any position."""
    g = torch.Generator().manual_seed(seed)
    return [space.sample(g, identity_prob=(0.0, None, 0.8)[i % 3]) for i in range(n)]


def perturb(module, seed=0, scale=0.1):
    """Move every weight away from its init (norms at 1, biases at 0) so a wrong slice shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def run_main(module, argv, capsys):
    """A CLI run in this process; returns (exit code, stderr)."""
    try:
        module.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def train_run(out, *argv):
    """train.py's training in this process into the folder `out`, with train.py's flags `argv`
    (after --out); the last epoch's record."""
    return train.train(train.parse_args(["--out", str(out), *argv]))


def image_folder(root, classes, n_train, n_val, size=(40, 48), ext="png", seed=0):
    """An ImageFolder tree (train/ and val/, one folder per class) of random pictures."""
    g = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls in classes:
            os.makedirs(root / split / cls)
            for i in range(n):
                Image.fromarray(g.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.{ext}")
    return root


def readme_block(containing):
    """The README's fenced python block that holds `containing`."""
    blocks = re.findall(r"```python\n(.*?)```", open(os.path.join(HERE, "README.md")).read(), re.S)
    return next(b for b in blocks if containing in b)


def torchrun(script, *argv, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": HERE}
    return subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, env=env, timeout=300)


def kept(width, full, side, widths=None):
    """The channels a slice keeps, written out as a list: the first or the last `width`, or (cyclic,
    embedding channels: `widths` the choices) the ring window after the narrower widths laid end
    to end, in ring order."""
    if width == full:
        return list(range(full))
    if side == "cyclic" and widths:
        start = sum(w for w in widths if w < width)
        return [(start + j) % full for j in range(width)]
    return list(range(full - width, full)) if side == "right" else list(range(width))


def vit_state_by_name(params, space, arch, side):
    """The plain ViT's state dict of `arch` taken here from the super-transformer's parameters by name
    (`params`: name -> tensor), at the channels kept() writes out: qkv is Q's rows of attn.qk.<h>
    (its first attn_dim rows), then K's (the next attn_dim), then attn.v's; no vitas code but kept."""
    C, A, M = space.embed_dims[-1], space.attn_dims[-1], space.mlp_dims[-1]
    inner = "left" if side == "cyclic" else side           # cyclic rings the embedding channels only
    e = kept(arch.embed_dim, C, side, space.embed_dims)
    t = f"tokens.p{arch.patch_size}."
    state = {"tokens.proj.weight": params[t + "proj.weight"][e], "tokens.proj.bias": params[t + "proj.bias"][e],
             "tokens.cls_token": params[t + "cls_token"][:, :, e], "tokens.pos_embed": params[t + "pos_embed"][:, :, e]}
    for i, b in enumerate(arch.blocks):
        if b is None:
            continue
        a, m, blk = kept(b.attn_dim, A, inner), kept(b.mlp_dim, M, inner), f"blocks.{i}."
        qk_w, qk_b = params[blk + f"attn.qk.{b.heads}.weight"], params[blk + f"attn.qk.{b.heads}.bias"]
        k_rows = [A + j for j in a]
        state.update({
            blk + "norm1.weight": params[blk + "norm1.weight"][e], blk + "norm1.bias": params[blk + "norm1.bias"][e],
            blk + "attn.qkv.weight": torch.cat([qk_w[a][:, e], qk_w[k_rows][:, e],              # Q, K, V rows
                                                params[blk + "attn.v.weight"][a][:, e]]),
            blk + "attn.qkv.bias": torch.cat([qk_b[a], qk_b[k_rows], params[blk + "attn.v.bias"][a]]),
            blk + "attn.proj.weight": params[blk + "attn.proj.weight"][e][:, a],
            blk + "attn.proj.bias": params[blk + "attn.proj.bias"][e],
            blk + "norm2.weight": params[blk + "norm2.weight"][e], blk + "norm2.bias": params[blk + "norm2.bias"][e],
            blk + "fc1.weight": params[blk + "fc1.weight"][m][:, e], blk + "fc1.bias": params[blk + "fc1.bias"][m],
            blk + "fc2.weight": params[blk + "fc2.weight"][e][:, m], blk + "fc2.bias": params[blk + "fc2.bias"][e]})
    return {**state, "norm.weight": params["norm.weight"][e], "norm.bias": params["norm.bias"][e],
            "head.weight": params["head.weight"][:, e], "head.bias": params["head.bias"]}


def brute_tau_b(x, y):
    """Kendall tau-b from its definition, pair by pair."""
    conc = disc = only_x = only_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                only_x += 1
            elif dy == 0:
                only_y += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    return (conc - disc) / ((conc + disc + only_x) * (conc + disc + only_y)) ** 0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A super-transformer trained about 18 s (6 epochs of 2,000 synthetic images: its reported archs
    reach 27-39% top-1 on the held-out images, chance 10%); its checkpoint path."""
    out = tmp_path_factory.mktemp("super")
    train_run(out, "--epochs", "6", "--uniform-epochs", "2", *WINDOW, "--synthetic-size", "2000", "--batch-size", "32",
              "--lr", "2e-3", "--eval-limit", "64", "--log-every", "1000", "--device", "cpu")
    return out / "checkpoint.pt"


def holdout_loader(ck_path, limit=None, extra=0):
    ck = runs.load_checkpoint(ck_path)
    space = SearchSpace(**ck["space"])
    net = vitas.SuperTransformer(space)
    net.load_state_dict(ck["model"])
    datasets = data.build_datasets(argparse.Namespace(**{**ck["args"], "holdout_extra": extra}), space.image_size)
    return net, space, data.eval_loader(datasets.holdout, 256, runs.Dist(), limit=limit)


def search_argv(ck, out, *extra):
    return ["--ckpt", str(ck), *WINDOW, "--population", "6", "--generations", "3", "--parents", "3",
            "--eval-size", "99", "--out", str(out), "--device", "cpu", *extra]


# -----------------------------------------------------------------------------
# (1) search space and arch records

def test_vitas_1g_preset_is_the_papers_space():
    assert BIG.image_size == 224 and BIG.num_classes == 1000 and BIG.depth == 16
    assert BIG.patch_sizes == (14, 16, 32)
    assert BIG.embed_dims == (38, 76, 115, 153, 192, 230, 268, 307, 345, 384)
    assert BIG.heads == (3, 6, 12, 16)
    assert BIG.attn_dims == tuple(range(48, 481, 48))
    assert BIG.mlp_dims == tuple(range(144, 1441, 144))
    BIG.validate(VITAS_C)


def test_space_dict_round_trip():
    for space in (TINY, BIG):
        d = json.loads(json.dumps(space.to_dict()))
        assert SearchSpace(**d) == space


def test_arch_json_round_trip():
    for space in (TINY, BIG):
        for arch in random_archs(space, 50, seed=1):
            back = Arch.from_dict(json.loads(json.dumps(arch.to_dict())))
            assert back == arch and hash(back) == hash(arch)
            space.validate(back)


@pytest.mark.parametrize("change, words", [
    (dict(patch_size=5), ["patch_size", "5", "[4, 8]"]),
    (dict(embed_dim=40), ["embed_dim", "40", "[32, 48, 64]"]),
    (dict(blocks=(Block(2, 32, 64),) * 5), ["5 block positions", "exactly 6"]),
    (dict(blocks=(Block(3, 48, 64),) + (None,) * 5), ["blocks[0].heads", "3", "[2, 4]"]),
    (dict(blocks=(None, Block(2, 40, 64)) + (None,) * 4), ["blocks[1].attn_dim", "40"]),
    (dict(blocks=(None,) * 5 + (Block(2, 32, 100),)), ["blocks[5].mlp_dim", "100", "[64, 128, 192]"]),
])
def test_validate_names_field_value_and_choices(change, words):
    base = dict(patch_size=4, embed_dim=32, blocks=(Block(2, 32, 64),) * 6)
    with pytest.raises(ValueError) as e:
        TINY.validate(Arch(**{**base, **change}))
    for w in words:
        assert w in str(e.value)


def test_validate_rejects_attention_width_not_divisible_by_heads():
    space = SearchSpace(image_size=32, in_chans=3, num_classes=10, patch_sizes=(8,), depth=2, embed_dims=(32,),
                        heads=(3, 4), attn_dims=(16, 24, 32), mlp_dims=(64,))
    with pytest.raises(ValueError, match=r"attn_dim = 32 is not divisible by heads = 3.*\[24\]"):
        space.validate(Arch(8, 32, (Block(3, 32, 64), None)))
    # the sampler never draws such a pair, yet draws every valid one
    g = torch.Generator().manual_seed(0)
    pairs = {(b.heads, b.attn_dim) for _ in range(500) for b in space.sample(g, 0.0).blocks}
    assert pairs == {(3, 24), (4, 16), (4, 24), (4, 32)}


@pytest.mark.parametrize("bad, words", [
    ([1, 2], ["JSON object"]),
    ({"patch_size": 4, "blocks": []}, ["missing", "embed_dim"]),
    ({"patch_size": "4", "embed_dim": 32, "blocks": []}, ["patch_size", "integer", "'4'"]),
    ({"patch_size": 4, "embed_dim": 32, "blocks": [{"heads": 2, "attn_dim": 32}]}, ["blocks[0]"]),
    ({"patch_size": 4, "embed_dim": 32, "blocks": [None, {"heads": 2.5, "attn_dim": 32, "mlp_dim": 64}]},
     ["blocks[1].heads", "2.5"]),
    ({"patch_size": 4, "embed_dim": 32, "blocks": 3}, ["blocks", "list"]),
])
def test_from_dict_rejects_malformed_input(bad, words):
    with pytest.raises(ValueError) as e:
        Arch.from_dict(bad)
    for w in words:
        assert w in str(e.value)


def test_bad_search_space_is_rejected():
    with pytest.raises(ValueError, match="not divisible by patch"):
        SearchSpace(**{**TINY.to_dict(), "patch_sizes": [5]})
    with pytest.raises(ValueError, match="unknown search space preset"):
        SearchSpace.preset("huge")


@pytest.mark.parametrize("preset", sorted(vitas.PRESETS))
def test_a_printed_preset_loads_back_as_the_same_space(preset, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--space", preset, "--print-space"])
    (tmp_path / "space.json").write_text(capsys.readouterr().out)
    assert e.value.code == 0 and cli.load_space(str(tmp_path / "space.json")) == SearchSpace.preset(preset)


@pytest.mark.parametrize("change, words", [
    (dict(patch_sizes=[]), ["patch_sizes", "[]", "distinct positive integers"]),
    (dict(patch_sizes=[4, 5]), ["image_size 32", "not divisible by patch", "[5]"]),
    (dict(heads=[4], attn_dims=[32, 66]), ["attn_dims", "(4,)", "[66]"]),
    (dict(depth=0), ["depth", "positive integer", "0"]),
    (dict(depht=6), ["unknown field(s) depht", "a search space has exactly"]),
    (dict(mlp_dims=None), ["missing mlp_dims"]),
    ([4, 8], ["JSON object", "image_size"]),
    ("{", ["not a readable JSON file"]),
    (None, ["neither a preset", "tiny, vitas-1g", "nor a file"]),
])
def test_a_bad_space_file_is_one_line_naming_the_field_value_and_what_is_allowed(change, words, tmp_path, capsys):
    path = tmp_path / "space.json"
    if isinstance(change, dict):
        fields = {k: v for k, v in {**TINY.to_dict(), **change}.items() if v is not None}
        path.write_text(json.dumps(fields))
    elif change is not None:
        path.write_text(change if isinstance(change, str) else json.dumps(change))
    code, err = run_main(train, ["--space", str(path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert all(w in err for w in words), err


def test_a_window_no_arch_of_a_space_file_reaches_is_one_line(tmp_path, capsys):
    (tmp_path / "space.json").write_text(json.dumps({**TINY.to_dict(), "depth": 1}))    # at most 3.4M FLOPs
    code, err = run_main(train, ["--space", str(tmp_path / "space.json"), "--out", str(tmp_path / "r"),
                                 "--flops-min", "5M", "--flops-max", "6M", *SMALL], capsys)
    assert code == 2 and "unreachable" in err and "3,400,448" in err and len(err.strip().splitlines()) == 1


def test_max_and_min_arch_bound_the_space():
    for space in (TINY, BIG):
        hi, lo = vitas.flops(space.max_arch(), space), vitas.flops(space.min_arch(), space)
        space.validate(space.max_arch()), space.validate(space.min_arch())
        for arch in random_archs(space, 300, seed=2):
            assert vitas.flops(arch, space) <= hi
            if arch.depth == space.depth:
                assert vitas.flops(arch, space) >= lo


def test_sample_is_reproducible_from_torch_and_numpy_generators():
    a = [TINY.sample(torch.Generator().manual_seed(5)) for _ in range(2)]
    b = [TINY.sample(np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1] and b[0] == b[1]
    g = torch.Generator().manual_seed(0)
    frac = sum(b is None for _ in range(400) for b in TINY.sample(g).blocks) / (400 * TINY.depth)
    assert 0.45 < frac < 0.55                      # uniform phase: identity with probability 1/2
    assert all(b is None for b in TINY.sample(g, identity_prob=1.0).blocks)


# -----------------------------------------------------------------------------
# (2) FLOPs and parameter counter

def deit_space(dim, heads):
    return SearchSpace(image_size=224, in_chans=3, num_classes=1000, patch_sizes=(16,), depth=12, embed_dims=(dim,),
                       heads=(heads,), attn_dims=(dim,), mlp_dims=(4 * dim,))


@pytest.mark.parametrize("dim, heads, gflops", [(192, 3, 1.254), (384, 6, 4.599)])
def test_flops_of_deit(dim, heads, gflops):
    space = deit_space(dim, heads)
    arch = Arch(16, dim, (Block(heads, dim, 4 * dim),) * 12)
    assert vitas.flops(arch, space) == pytest.approx(gflops * 1e9, rel=0.005)


def torch_count(model, space):
    """MACs by PyTorch's own counter (2 FLOPs per MAC), explicit-matmul attention, on meta tensors."""
    model = vitas.use_fused_attention(model, False).to("meta")
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, space.in_chans, space.image_size, space.image_size, device="meta"))
    return counter.get_total_flops() // 2


@pytest.mark.slow
@pytest.mark.parametrize("space, archs, exported", [(TINY, 40, 42), (BIG, 16, 6)], ids=["tiny", "vitas-1g"])
def test_flops_and_params_match_pytorch_on_exported_models(space, archs, exported):
    """Counted on the exported ViT; for the big space (PyTorch's counter takes about a second per
    arch there) on fewer archs, most of them the ViT of the arch built on the meta device (what
    export builds and loads, strict, without the cost of real weights)."""
    net = vitas.SuperTransformer(space)
    archs = [space.max_arch(), space.min_arch()] + random_archs(space, archs, seed=3)
    assert any(b is None for a in archs for b in a.blocks[:-1])   # identity before a real block occurs
    for i, arch in enumerate(archs):
        if i < exported:
            vit = vitas.export(net, arch, side="right")
        else:
            with torch.device("meta"):
                vit = vitas.ViT(arch, space)
        assert vitas.params(arch, space) == sum(p.numel() for p in vit.parameters())
        assert vitas.flops(arch, space) == torch_count(vit, space), str(arch)


def test_counter_matches_pytorch_on_deit_tiny():
    space = deit_space(192, 3)
    arch = Arch(16, 192, (Block(3, 192, 768),) * 12)
    with torch.device("meta"):
        vit = vitas.ViT(arch, space)
    assert vitas.flops(arch, space) == torch_count(vit, space)


# -----------------------------------------------------------------------------
# (3) the plain ViT and the super-transformer: forward written out from parameter names, gradients,
# state-dict names, export, cyclic windows, attention, AdamW and weight decay, the stacked layout, bench

WRAPS = Arch(4, 48, (Block(2, 32, 128), None, Block(4, 48, 64), None, None, Block(2, 64, 192)))   # cyclic 48 wraps


def written_out(params, space, x, arch, side):
    """The sub-network's logits computed here from the super-transformer's parameters by name
    (`params`: name -> tensor), every slice an explicit list of channels (kept), attention as
    softmax(Q K^T / sqrt(d)) V per head: no vitas code but the arch records."""
    C, A, M = space.embed_dims[-1], space.attn_dims[-1], space.mlp_dims[-1]
    inner = "left" if side == "cyclic" else side
    e = kept(arch.embed_dim, C, side, space.embed_dims)

    def linear(h, w, b, rows, cols):            # rows: output channels kept, cols: input channels kept
        return h @ w[rows][:, cols].T + b[rows]

    def norm(h, prefix):
        return F.layer_norm(h, (len(e),), params[prefix + ".weight"][e], params[prefix + ".bias"][e])

    t, P = f"tokens.p{arch.patch_size}.", arch.patch_size
    x = F.conv2d(x, params[t + "proj.weight"][e], params[t + "proj.bias"][e], stride=P).flatten(2).transpose(1, 2)
    x = torch.cat([params[t + "cls_token"][:, :, e].expand(len(x), -1, -1), x], 1) + params[t + "pos_embed"][:, :, e]
    B, T, _ = x.shape
    for i, b in enumerate(arch.blocks):
        if b is None:
            continue
        p = {k[len(f"blocks.{i}."):]: v for k, v in params.items() if k.startswith(f"blocks.{i}.")}
        a, m = kept(b.attn_dim, A, inner), kept(b.mlp_dim, M, inner)
        h = norm(x, f"blocks.{i}.norm1")
        qk_w, qk_b = p[f"attn.qk.{b.heads}.weight"], p[f"attn.qk.{b.heads}.bias"]
        q, k, v = (linear(h, qk_w, qk_b, a, e), linear(h, qk_w, qk_b, [A + j for j in a], e),
                   linear(h, p["attn.v.weight"], p["attn.v.bias"], a, e))
        q, k, v = (z.view(B, T, b.heads, -1).transpose(1, 2) for z in (q, k, v))       # (B, heads, T, d)
        h = ((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).softmax(-1) @ v
        x = x + linear(h.transpose(1, 2).reshape(B, T, -1), p["attn.proj.weight"], p["attn.proj.bias"], e, a)
        h = F.gelu(linear(norm(x, f"blocks.{i}.norm2"), p["fc1.weight"], p["fc1.bias"], m, e))
        x = x + linear(h, p["fc2.weight"], p["fc2.bias"], e, m)
    return linear(norm(x[:, 0], "norm"), params["head.weight"], params["head.bias"], list(range(space.num_classes)), e)


SIDES3 = ("left", "right", "cyclic")


@pytest.mark.slow
@pytest.mark.parametrize("side", SIDES3)
def test_super_transformer_equals_the_forward_written_out_from_parameter_names(side):
    """Tiny archs of every patch size (identities anywhere, the wrapping cyclic window, the extremes)
    and, one side each, a few vitas-1g archs: SuperTransformer(x, arch, side) equals written_out."""
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(TINY)).double().eval()
    params = dict(net.named_parameters())
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    archs = [WRAPS, TINY.max_arch(), TINY.min_arch(), *random_archs(TINY, 6, seed=7)]
    assert {a.patch_size for a in archs} == set(TINY.patch_sizes)
    with torch.no_grad():
        for arch in archs:
            torch.testing.assert_close(net(x, arch, side), written_out(params, TINY, x, arch, side),
                                       rtol=1e-10, atol=1e-10, msg=f"{arch} {side}")
        big = perturb(vitas.SuperTransformer(BIG), scale=0.02).eval()
        x = torch.randn(1, 3, 224, 224)
        for arch in [VITAS_C, *random_archs(BIG, 1, seed={"left": 1, "right": 2, "cyclic": 3}[side])]:
            torch.testing.assert_close(big(x, arch, side), written_out(dict(big.named_parameters()), BIG, x, arch,
                                                                       side), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("side", SIDES3)
def test_super_gradients_equal_those_of_the_written_out_forward(side):
    """Every parameter's gradient equals the written-out forward's (autograd through its own list
    indexing), zero or None off the slice: a step trains exactly the channels its arch uses."""
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(TINY)).double()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.arange(4)
    for arch in (WRAPS, TINY.max_arch(), Arch(8, 32, (None, Block(4, 64, 64)) + (None,) * 4)):
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, arch, side), y).backward()
        leaves = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
        F.cross_entropy(written_out(leaves, TINY, x, arch, side), y).backward()
        for name, p in net.named_parameters():
            want = leaves[name].grad
            if want is None or not want.any():
                assert p.grad is None or not p.grad.any(), (name, str(arch))
            else:
                torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-12, msg=f"{name} {arch} {side}")


def test_largest_arch_trains_every_part_of_its_branch():
    """The largest arch's step gives every parameter of its branch a gradient (Q's and K's rows of
    the drawn head count's qk both); the other head counts' Q and K and the other patch sizes'
    tokens none at all (None: the optimizer skips them)."""
    net = perturb(vitas.SuperTransformer(TINY))
    arch = TINY.max_arch()
    F.cross_entropy(net(torch.randn(8, 3, 32, 32), arch), torch.arange(8)).backward()
    h, A = arch.blocks[0].heads, TINY.attn_dims[-1]
    for name, p in net.named_parameters():
        other_tokens = name.startswith("tokens.") and not name.startswith(f"tokens.p{arch.patch_size}.")
        if other_tokens or (".qk." in name and f".qk.{h}." not in name):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.any(), name
            if f".qk.{h}." in name:
                assert p.grad[:A].any() and p.grad[A:].any(), name        # Q's rows and K's


def test_state_dict_keys_are_the_plain_vits_with_private_tokens_and_qk():
    """tokens. -> tokens.p<P>. for every patch size, attn.qkv. -> attn.qk.<h>. for every head count
    plus attn.v.; every other key as in the plain ViT of the largest arch."""
    for space in (TINY, BIG):
        with torch.device("meta"):
            plain = vitas.ViT(space.max_arch(), space).state_dict().keys()
            got = set(vitas.SuperTransformer(space).state_dict())
        want = set()
        for k in plain:
            if k.startswith("tokens."):
                want |= {k.replace("tokens.", f"tokens.p{p}.") for p in space.patch_sizes}
            elif ".attn.qkv." in k:
                want |= {k.replace(".qkv.", f".qk.{h}.") for h in space.heads} | {k.replace(".qkv.", ".v.")}
            else:
                want.add(k)
        assert got == want


def test_export_equals_super_transformer_tiny_both_sides():
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(TINY)).eval()
    x = torch.randn(4, 3, 32, 32)
    differs = 0
    for arch in random_archs(TINY, 24, seed=4):
        outs = {}
        for side in ("left", "right", "cyclic"):
            vit = vitas.export(net, arch, side)
            fresh = vitas.ViT(arch, TINY)
            fresh.load_state_dict(vit.state_dict())
            with torch.no_grad():
                outs[side] = net(x, arch, side)
                assert torch.allclose(outs[side], vit(x), atol=1e-5), (str(arch), side)
                assert torch.allclose(outs[side], fresh.eval()(x), atol=1e-5)
        differs += not torch.allclose(outs["left"], outs["right"], atol=1e-3)
    assert differs >= 12          # left and right really are different slices


@pytest.mark.slow
def test_export_equals_super_transformer_vitas_1g():
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(BIG), scale=0.02).eval()
    x = torch.randn(1, 3, 224, 224)
    for arch, side in [(VITAS_C, "left"), (VITAS_C, "right")] + [(a, "right") for a in random_archs(BIG, 2, seed=5)]:
        with torch.no_grad():
            assert torch.allclose(net(x, arch, side), vitas.export(net, arch, side)(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("side", ["left", "right", "cyclic"])
def test_every_exported_parameter_is_the_super_transformers_indexed_by_name(side):
    """export's state dict against the one taken here by name (vit_state_by_name): every key, every
    value exactly; archs with the wrapping cyclic window, identities between blocks, every head
    count and patch size, the largest and smallest widths."""
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(TINY)).eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    archs = [WRAPS, TINY.max_arch(), TINY.min_arch(), Arch(8, 32, (None, Block(4, 64, 64)) + (None,) * 4)]
    assert {a.patch_size for a in archs} == set(TINY.patch_sizes)
    assert {b.heads for a in archs for b in a.blocks if b} == set(TINY.heads)
    for arch in archs:
        got, want = vitas.export(net, arch, side).state_dict(), vit_state_by_name(params, TINY, arch, side)
        assert got.keys() == want.keys(), (str(arch), sorted(got.keys() ^ want.keys()))
        for k in want:
            assert torch.equal(got[k], want[k]), (str(arch), side, k)


def test_export_with_drop_path_equals_the_super_transformer_in_eval_and_draws_alike_in_train():
    """A super-transformer with stochastic depth and its export at the same rate: equal in eval mode;
    in train mode, from the same torch seed, the same drop-path draws (equal outputs), which do drop
    (the output is not the eval one, and another seed gives another)."""
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(TINY, drop_path_rate=0.5))
    x = torch.randn(4, 3, 32, 32)
    arch = Arch(8, 48, (Block(2, 32, 128), None, Block(4, 48, 64), None, Block(2, 64, 192), Block(4, 32, 64)))
    with torch.no_grad():
        for side in ("left", "right", "cyclic"):
            vit = vitas.export(net.eval(), arch, side, drop_path_rate=0.5)
            assert not vit.training
            calm = net(x, arch, side)
            torch.testing.assert_close(vit(x), calm, rtol=1e-5, atol=1e-5)
            net.train(), vit.train()
            torch.manual_seed(1)
            dropped = net(x, arch, side)
            torch.manual_seed(1)
            torch.testing.assert_close(vit(x), dropped, rtol=1e-5, atol=1e-5,
                                       msg=f"{side}: in train mode the export draws other drop paths")
            torch.manual_seed(2)
            assert not torch.allclose(dropped, calm, atol=1e-3) and not torch.allclose(vit(x), dropped, atol=1e-3)


@pytest.mark.parametrize("widths", [TINY.embed_dims, BIG.embed_dims, (8, 24, 40, 48), (5, 7, 16), (3, 100)])
def test_cyclic_windows_use_every_channel_equally_often(widths):
    full, counts = max(widths), [0] * max(widths)
    for w in widths:
        sc = vitas.channels(w, full, "cyclic", widths)
        idx = list(range(full))[sc] if isinstance(sc, slice) else sc.tolist()
        assert len(idx) == len(set(idx)) == w
        for i in idx:
            counts[i] += 1
    assert max(counts) - min(counts) <= 1, counts     # left slicing: the first channel in all, the last in one


def test_wrong_image_size_and_side_are_rejected():
    net = vitas.SuperTransformer(TINY)
    arch = TINY.min_arch()
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*\(2, 3, 33, 33\)"):
        net(torch.randn(2, 3, 33, 33), arch)
    with pytest.raises(ValueError, match="side"):
        net(torch.randn(2, 3, 32, 32), arch, side="middle")
    for side, widths in (("bilateral", TINY.embed_dims), ("cyclic", None)):    # a sharing is not a side
        for width in (32, 64):                                                    # the full width too
            with pytest.raises(ValueError, match="side must be"):
                vitas.channels(width, 64, side, widths)
    with pytest.raises(ValueError, match="embed_dim"):
        net(torch.randn(2, 3, 32, 32), Arch(4, 40, arch.blocks))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        vitas.ViT(arch, TINY)(torch.randn(2, 3, 64, 64))


def test_fused_and_explicit_attention_agree():
    torch.manual_seed(0)
    vit = perturb(vitas.ViT(TINY.max_arch(), TINY)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = vit(x)
        explicit = vitas.use_fused_attention(vit, False)(x)
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_plain_vit_attention_matches_torch_multihead_attention():
    """Independent reference: nn.MultiheadAttention on the ViT's own Q/K/V, then its projection."""
    torch.manual_seed(0)
    attn = perturb(vitas.ViT(Arch(8, 48, (Block(4, 32, 64),) + (None,) * 5), TINY)).blocks[0].attn
    x = torch.randn(2, 17, 48)
    q, k, v = (F.linear(x, w, b) for w, b in zip(attn.qkv.weight.chunk(3), attn.qkv.bias.chunk(3)))
    mha = torch.nn.MultiheadAttention(32, 4, bias=False, batch_first=True)   # 4 heads over width 32
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.eye(32).repeat(3, 1))
        mha.out_proj.weight.copy_(torch.eye(32))
        ref = F.linear(mha(q, k, v, need_weights=False)[0], attn.proj.weight, attn.proj.bias)
        assert torch.allclose(attn(x), ref, atol=1e-5)


def test_adamw_leaves_the_qk_of_a_head_count_a_step_does_not_draw_exactly_as_it_was():
    """The optimizer's treatment of what a step does not draw: a head count's private Q and K get
    no gradient from a step that does not draw it, so a real AdamW step (weight decay on, as
    train.py builds it, after a step that did draw it, so momentum is there) leaves them exactly
    as they were; the undrawn channels of a drawn shared matrix get a zero gradient and are
    decayed (and moved by their momentum, none here: never drawn). Compared with values saved
    before the step."""
    torch.manual_seed(0)
    net = vitas.SuperTransformer(TINY)
    lr, wd = 1e-2, 0.05
    opt = torch.optim.AdamW(runs.param_groups(net, wd), lr=lr, betas=(0.9, 0.999))
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    four, two = (Arch(8, 48, (Block(h, 32, 64),) * TINY.depth) for h in (4, 2))
    for arch in (four, two):                    # heads 4 drawn, then a step that draws only heads 2
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, arch), y).backward()
        opt.step()
    after = dict(net.named_parameters())
    for i in range(TINY.depth):
        for part in ("weight", "bias"):
            name = f"blocks.{i}.attn.qk.4.{part}"
            assert after[name].grad is None and opt.state[after[name]]["exp_avg"].any()   # momentum it did not use
            assert torch.equal(after[name].detach(), before[name]), name
            drawn = f"blocks.{i}.attn.qk.2.{part}"
            assert not torch.equal(after[drawn].detach(), before[drawn])
        fc1 = after[f"blocks.{i}.fc1.weight"]       # rows past the drawn MLP width 64: zero gradient, decayed
        assert not fc1.grad[64:].any()
        torch.testing.assert_close(fc1.detach()[64:], before[f"blocks.{i}.fc1.weight"][64:] * (1 - lr * wd))


def test_no_weight_decay_on_norms_biases_class_tokens_and_position_embeddings_and_plain_init():
    """runs.param_groups on the super-transformer, against the rule written out by name; every
    parameter initialised as the plain ViT's: matrices, tokens trunc-normal(0.02), norms one,
    biases zero."""
    torch.manual_seed(0)
    net = vitas.SuperTransformer(TINY)
    decay, no_decay = (set(map(id, g["params"])) for g in runs.param_groups(net, 0.05))
    for name, p in net.named_parameters():
        free = ".norm" in name or name.startswith("norm.") or name.endswith((".bias", "cls_token", "pos_embed"))
        assert (id(p) in no_decay, id(p) in decay) == (free, not free), name
        w = p.detach()
        if name.endswith(".bias"):
            assert not w.any(), name
        elif "norm" in name:
            assert torch.equal(w, torch.ones_like(w)), name
        else:
            assert abs(w.std().item() - 0.02) < 0.005 and w.abs().max() < 0.02 * 6, name


def test_a_checkpoint_of_the_stacked_layout_is_refused_in_one_line(tmp_path, capsys):
    """Super-transformer checkpoints from before the named parameters (blocks.N.weight and
    .vector) fail with one line naming the change, wherever a checkpoint is read."""
    ck = {"model": {"blocks.0.weight": torch.zeros(2, 2), "blocks.0.vector": torch.zeros(4)},
          "space": TINY.to_dict(), "args": {}, "mode": "super"}
    path = tmp_path / "old.pt"
    runs.save_checkpoint(str(path), ck)
    with pytest.raises(cli.UserError, match=r"stacked.*(retrain|train it again)") as e:
        runs.load_checkpoint(path, "--ckpt")
    assert "\n" not in str(e.value)


def test_bench_without_slicing_computes_the_same_step_from_kept_slices():
    """bench's "no slicing" floor runs the super-transformer's own computation: the same logits and
    the same gradients of the sliced parameters, from slices taken once and kept as leaves."""
    torch.manual_seed(0)
    net = vitas.SuperTransformer(TINY)
    kept_net = bench.without_slicing(copy.deepcopy(net))
    x = torch.randn(4, 3, 32, 32)
    for side in ("left", "right"):
        assert torch.allclose(kept_net(x, bench.TINY_MID, side), net(x, bench.TINY_MID, side), atol=1e-6)
    e, choice = slice(0, 48), bench.TINY_MID.blocks[0]
    leaves = kept_net.blocks[0].sliced(e, choice, "left")
    assert kept_net.blocks[0].sliced(e, choice, "left") is leaves and all(t.is_leaf for t in leaves.values())
    kept_net(x, bench.TINY_MID, "left").sum().backward()
    net(x, bench.TINY_MID, "left").sum().backward()
    torch.testing.assert_close(leaves["fc1.weight"].grad, net.blocks[0].fc1.weight.grad[:128, :48])
    kept_net(x, bench.TINY_MID, "left").sum().backward()       # a second step: its own gradient, not two summed
    torch.testing.assert_close(leaves["fc1.weight"].grad, net.blocks[0].fc1.weight.grad[:128, :48])
    assert all(p.grad is None for p in kept_net.parameters())                  # nothing reaches the parameters


def test_bench_step_ratios_are_medians_over_rounds_taken_in_turns(monkeypatch):
    """step_ratios times each kind in rounds of ROUND, the kinds in a fresh order per round, and
    reports each kind's per-round median over the plain step's: the median and quartiles over
    rounds, checked against the same figures worked out by hand from the recorded times."""
    calls = []

    def kind(name, base):
        def f():
            calls.append(name)
            return base * (1 + 0.01 * (len(calls) % 7))     # a deterministic drift through the run
        f.__name__ = name
        return f

    fns = [kind("plain", 1.0), kind("one_side", 1.1), kind("bilateral", 2.2), kind("no_slicing", 0.9)]
    monkeypatch.setattr(bench, "steps", lambda *a: fns)
    monkeypatch.setattr(bench, "step_time", lambda f: f())
    plain, *ratios = bench.step_ratios(None, None, 1, "cpu", repeats=12, warmup=2)
    rounds = -(-12 // bench.ROUND)
    assert len(calls) == 4 * (2 + rounds * bench.ROUND)
    timed, cost = calls[8:], {f.__name__: f for f in fns}
    turns = [timed[r * 4 * bench.ROUND:(r + 1) * 4 * bench.ROUND][:4] for r in range(rounds)]
    assert all(sorted(t) == sorted(cost) for t in turns) and len({tuple(t) for t in turns}) > 1  # fresh orders
    base = {"plain": 1.0, "one_side": 1.1, "bilateral": 2.2, "no_slicing": 0.9}
    per_round = []
    for r in range(rounds):
        times = {k: [] for k in base}
        for i, name in enumerate(timed[r * 4 * bench.ROUND:(r + 1) * 4 * bench.ROUND]):
            times[name].append(base[name] * (1 + 0.01 * ((9 + r * 4 * bench.ROUND + i) % 7)))
        per_round.append({k: float(np.median(v)) for k, v in times.items()})
    assert plain == pytest.approx(np.median([r["plain"] for r in per_round]))
    for name, got in zip(("one_side", "bilateral", "no_slicing"), ratios):
        want = np.percentile([r[name] / r["plain"] for r in per_round], (50, 25, 75))
        assert np.allclose(got, want) and got[1] <= got[0] <= got[2]


# -----------------------------------------------------------------------------
# (4) sampling: identity probability, samplers, cells, recipes (the default one pinned)

def test_learned_identity_probability_concentrates_flops_in_the_window():
    lo, hi = LO, HI
    sampler = train.ArchSampler(TINY, seed=0, uniform_epochs=1, window=(lo, hi))
    raw = [vitas.flops(TINY.sample(np.random.default_rng(i), sampler.identity_prob), TINY) for i in range(2000)]
    assert lo <= np.mean(raw) <= hi                              # p solved so the mean lands in the window
    learned = [vitas.flops(sampler(step, epoch=1)[0], TINY) for step in range(500)]
    assert np.mean([lo <= f <= hi for f in learned]) >= 0.9
    # without the redraw, the draws at the learned p centre on the window (E[FLOPs] is exact at p;
    # at 1/2 or 1 - p they miss by over 5%)
    raw_sampler = train.ArchSampler(TINY, seed=0, uniform_epochs=0, window=(lo, hi), max_tries=1)
    centre = np.mean([vitas.flops(raw_sampler(step, epoch=0)[0], TINY) for step in range(20000)])
    assert centre == pytest.approx((lo + hi) / 2, rel=0.015)
    uniform = [sampler(step, epoch=0)[0] for step in range(500)]    # uniform phase first: p = 1/2
    assert 0.45 < np.mean([b is None for a in uniform for b in a.blocks]) < 0.55
    assert sampler(7, 1) == sampler(7, 1)                        # (seed, step) decides the arch


def mean_flops_at(space, p):
    """E[FLOPs] of space.sample(generator, p), from every choice as sample() draws it: patch size and
    embed dim uniform, each block identity with probability p, else heads uniform, then an attention
    width uniform among those the heads divide, and an MLP width uniform."""
    total = 0.0
    for patch in space.patch_sizes:
        for c in space.embed_dims:
            empty = vitas.flops(Arch(patch, c, (None,) * space.depth), space)
            per_block = np.mean([np.mean([vitas.flops(Arch(patch, c, (Block(h, a, m),) * space.depth), space) - empty
                                          for a in space.attn_dims if a % h == 0 for m in space.mlp_dims])
                                 for h in space.heads])
            total += empty + (1 - p) * per_block          # per_block: all depth blocks present
    return total / (len(space.patch_sizes) * len(space.embed_dims))


@pytest.mark.parametrize("space, window", [(TINY, (2e6, 4e6)), (TINY, (2.9e6, 3.1e6)), (TINY, (1.0e6, 1.5e6)),
                                           (BIG, (0.9e9, 1.1e9)), (BIG, (0.6e9, 0.8e9))])
def test_solved_identity_probability_centres_the_expected_flops_in_the_window(space, window):
    """The solved p against an independent expectation: a wrong solve (no solve, p = 1/2, or p and
    1 - p swapped) misses the window's centre by far more than 1%."""
    centre = sum(window) / 2
    p = vitas.solve_identity_prob(space, *map(int, window))
    assert 0 < p < 1 and mean_flops_at(space, p) == pytest.approx(centre, rel=0.01)
    for wrong in (0.5, 1 - p):
        assert abs(mean_flops_at(space, wrong) / centre - 1) > 0.05, wrong


def test_identity_probability_clips_at_zero_and_one():
    top = vitas.flops(TINY.max_arch(), TINY)
    assert mean_flops_at(TINY, 0.0) < 0.9 * top and vitas.solve_identity_prob(TINY, int(0.9 * top), top) == 0.0
    bottom = vitas.flops(Arch(TINY.patch_sizes[-1], TINY.embed_dims[0], (None,) * TINY.depth), TINY)
    assert (mean_flops_at(TINY, 1.0) > 1.01 * bottom
            and vitas.solve_identity_prob(TINY, bottom, int(1.01 * bottom)) == 1.0)


def test_unreachable_flops_window_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="unreachable"):
        train.ArchSampler(TINY, 0, 0, window=(10**12, 2 * 10**12))
    code, err = run_main(train, ["--out", str(tmp_path), "--flops-min", "1G", "--flops-max", "2G", *SMALL], capsys)
    assert code == 2 and "unreachable" in err and "Traceback" not in err


def test_reported_archs_lie_in_the_window_and_are_extremes_among_uniform_archs():
    lo, hi = LO, HI
    rep = record.reported_archs(TINY, (lo, hi))
    uniform = [(vitas.flops(a, TINY), a) for a in TINY.uniform_archs()]
    inside = [f for f, a in uniform if lo <= f <= hi]
    f = {k: vitas.flops(a, TINY) for k, a in rep.items()}
    assert all(lo <= v <= hi for v in f.values())
    assert f["largest"] == max(inside) and f["smallest"] == min(inside)
    assert abs(f["middle"] - 3e6) == min(abs(v - 3e6) for v in inside)
    assert len(uniform) == len(set(a for _, a in uniform)) == 2 * 3 * (3 + 3) * 3 * 6


def test_identity_shifting_draws_and_searches_real_blocks_first():
    sampler = train.ArchSampler(TINY, seed=0, uniform_epochs=0, window=(LO, HI), identity_shift=True)
    plain = train.ArchSampler(TINY, seed=0, uniform_epochs=0, window=(LO, HI))
    for step in range(200):
        a, b = sampler(step, 1)[0], plain(step, 1)[0]
        assert a == vitas.shift_identities(b) and a.blocks == tuple(x for x in b.blocks if x) + (None,) * (6 - b.depth)
    evo = Evolution(TINY, "2M", "4M", population=20, identity_shift=True, seed=1)
    for _ in range(3):
        archs = evo.propose()
        assert all(a == vitas.shift_identities(a) for a in archs)
        evo.record(archs, [a.depth for a in archs])


def test_depth_balanced_sampling_draws_every_reachable_depth_alike_inside_the_window():
    lo, hi = LO, HI
    balanced = train.ArchSampler(TINY, seed=0, uniform_epochs=0, window=(lo, hi), sampling="depth-balanced")
    plain = train.ArchSampler(TINY, seed=0, uniform_epochs=0, window=(lo, hi))
    depths = [d for _, d in balanced.cells]
    assert len(depths) >= 4 and depths == sorted(depths) and all(p is None for p, _ in balanced.cells)
    drawn = [balanced(step, 1)[0] for step in range(1200)]
    assert np.mean([lo <= vitas.flops(a, TINY) <= hi for a in drawn]) >= 0.9
    counts = np.bincount([a.depth for a in drawn], minlength=TINY.depth + 1)[depths] / len(drawn)
    assert counts.min() > 0.5 / len(depths)                              # no reachable depth starved ...
    binomial = np.bincount([plain(step, 1)[0].depth for step in range(1200)], minlength=TINY.depth + 1)[depths] / 1200
    assert counts.std() < binomial.std()                                 # ... and flatter than the binomial depths
    assert np.mean([a.depth for a in drawn]) > np.mean([plain(step, 1)[0].depth for step in range(1200)])
    assert balanced(5, 1) == balanced(5, 1)                              # (seed, step) still decides


def counted_shares(sampler, steps, epoch):
    """Sampler statistics counted here from the draws themselves: per block position and patch size
    the share of steps whose archs use it, per depth the share of drawn archs."""
    drawn = [sampler(step, epoch) for step in steps]
    blocks = [np.mean([any(a.blocks[i] is not None for a in archs) for archs in drawn]) for i in range(TINY.depth)]
    patches = {str(p): np.mean([any(a.patch_size == p for a in archs) for archs in drawn]) for p in TINY.patch_sizes}
    flat = [a for archs in drawn for a in archs]
    return blocks, patches, [np.mean([a.depth == d for a in flat]) for d in range(TINY.depth + 1)]


@pytest.mark.slow
def test_log_holds_the_sampler_statistics_of_each_epoch_as_counted_from_the_draws(tmp_path):
    train_run(tmp_path, "--epochs", "2", "--uniform-epochs", "1", *WINDOW, "--sandwich", "1", "--recipe", "v2", *SMALL,
              "--synthetic-size", "320")
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    sampler = train.ArchSampler(TINY, 0, 1, (LO, HI), sandwich=1, identity_shift=True)
    steps_per_epoch = records[0]["step"]
    for epoch, r in enumerate(records):
        blocks, patches, depths = counted_shares(
            sampler, range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch), epoch)
        assert r["sampled"]["block_share"] == pytest.approx(blocks)
        assert r["sampled"]["patch_share"] == pytest.approx(patches)
        assert r["sampled"]["depth_share"] == pytest.approx(depths)
    # v2 starves the last
    assert records[1]["sampled"]["block_share"][-1] < 0.5 < records[1]["sampled"]["block_share"][0]


@pytest.mark.parametrize("recipe, fair", [(["--recipe", "v1", "--sampling", "depth-balanced"], True),
                                          (["--recipe", "fair"], True), (["--recipe", "v2"], False),
                                          (["--recipe", "v1"], False), (["--recipe", "v2+strat"], False)])
def test_fair_samplers_train_every_block_position_and_patch_size(recipe, fair):
    """In the quick start's window: every block position at least half as often as the most trained
    one, each patch size on at least a third of the steps (v2 and v1 miss, as the README says; the
    default v2+strat misses the block share: identity shifting trains the last positions least)."""
    args = train.resolve_recipe(train.parse_args([*recipe, *WINDOW]))
    sampler = train.ArchSampler(TINY, 0, 0, (LO, HI), identity_shift=args.identity_shift == "train",
                                sampling=args.sampling)
    blocks, patches, _ = counted_shares(sampler, range(3000), 1)
    meets = min(blocks) >= 0.5 * max(blocks) and min(patches.values()) >= 1 / 3
    assert meets == fair, (blocks, patches)


def v2_strat_sampler():
    """The sampler train.py builds for --recipe v2+strat in the quick start's window, learned from epoch 0."""
    args = train.resolve_recipe(train.parse_args(["--recipe", "v2+strat", *WINDOW, "--uniform-epochs", "0"]))
    return train.make_sampler(args, TINY, runs.Dist())


def test_stratified_sampling_draws_each_of_its_cells_alike():
    """Over 2,100 learned-phase steps each (patch size, depth) cell of sampler.cells is drawn 1/k of
    the time within 4 binomial SDs (k cells; the cell first, whatever the redraws inside the window),
    and no draw is of another cell. Which cells the window has is not this test's."""
    sampler, n = v2_strat_sampler(), 2100
    assert sampler.cells is not None and len(sampler.cells) >= 4
    drawn = [(a.patch_size, a.depth) for step in range(n) for a in sampler(step, 1)]
    assert set(drawn) <= set(sampler.cells)
    share = 1 / len(sampler.cells)
    bound = 4 * np.sqrt(n * share * (1 - share))
    for cell in sampler.cells:
        assert abs(drawn.count(cell) - n * share) <= bound, (cell, drawn.count(cell), n * share, bound)


def test_v2_strat_trains_the_last_block_position_in_the_learned_phase():
    """v2+strat shifts the identities behind the real blocks, so the last position trains only on
    full-depth draws: over 1,000 learned-phase steps it still has a share of the steps."""
    blocks, _, _ = counted_shares(v2_strat_sampler(), range(1000), 1)
    assert blocks[-1] > 0, blocks


def test_identity_shift_search_trains_identities_anywhere_and_scores_them_shifted():
    args = vars(train.resolve_recipe(train.parse_args(["--recipe", "fair", *WINDOW])))
    assert args["identity_shift"] == "search" and args["sampling"] == "stratified" and runs.scores_shifted(args)
    sampler = train.ArchSampler(TINY, 0, 0, (LO, HI), identity_shift=False, sampling="stratified")
    drawn = [sampler(step, 1)[0] for step in range(200)]
    assert any(a != vitas.shift_identities(a) for a in drawn)                 # identities before real blocks
    assert not runs.scores_shifted(vars(train.resolve_recipe(train.parse_args(["--recipe", "v1"]))))
    assert runs.scores_shifted({"identity_shift": True})                     # checkpoints of the two-valued flag


@pytest.mark.slow
def test_patch_sizes_trains_a_super_transformer_of_those_patch_sizes_only(tmp_path, capsys):
    out = tmp_path / "p8"
    argv = ["--out", str(out), "--epochs", "1", "--uniform-epochs", "0", *WINDOW, *SMALL, "--synthetic-size", "320"]
    assert run_main(train, [*argv, "--patch-sizes", "8"], capsys)[0] == 0
    ck = runs.load_checkpoint(out / "checkpoint.pt")
    assert SearchSpace(**ck["space"]) == SearchSpace(**{**TINY.to_dict(), "patch_sizes": [8]})
    assert set(ck["model"]) == {k for k in vitas.SuperTransformer(TINY).state_dict() if not k.startswith("tokens.p4")}
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert log[-1]["sampled"]["patch_share"] == {"8": 1.0}
    assert run_main(train, argv, capsys)[0] == 0            # resumed without --patch-sizes: the checkpoint's space
    code, err = run_main(train, [*argv, "--space", "tiny"], capsys)           # resumed into the whole space
    assert code == 2 and "another search space" in err and "Traceback" not in err, err
    for bad, words in ((["--patch-sizes", "5"], "not in space tiny"), (["--patch-sizes", "0"], "--patch-sizes"),
                       (["--patch-sizes", "8", "--arch", str(tmp_path / "a.json")], "a retrain")):
        code, err = run_main(train, ["--out", str(tmp_path / "bad"), *bad, *SMALL], capsys)
        assert code == 2 and words in err and "Traceback" not in err, err


def test_the_default_recipe_is_v2_with_stratified_sampling():
    """train.py with no flags: recipe v2+strat, which is v2's settings (bilateral sharing, a loss per
    side, no sandwich or distillation, identities shifted while training, the super-transformer's
    weak regularisation) with stratified sampling, written out here."""
    assert train.DEFAULT_RECIPE == "v2+strat"
    got = vars(train.resolve_recipe(train.parse_args([])))
    want = {"recipe": "v2+strat", "sharing": "bilateral", "bilateral_loss": "two", "sandwich": None, "distill": False,
            "identity_shift": "train", "sampling": "stratified", "smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0,
            "randaug": 0, "reprob": 0.0, "drop_path": 0.0}
    assert {k: got[k] for k in want} == want
    v2 = vars(train.resolve_recipe(train.parse_args(["--recipe", "v2"])))
    assert got == {**v2, "recipe": "v2+strat", "sampling": "stratified"}    # nothing else differs from v2


def brute_force_window_cells(space, lo, hi):
    """The (patch size, depth) cells holding an arch whose FLOPs lie in [lo, hi], by trying every
    embed dim and every multiset of block widths (FLOPs do not depend on heads or block order)."""
    widths = [(a, m) for a in space.attn_dims for m in space.mlp_dims]
    cells = set()
    for p, c, d in itertools.product(space.patch_sizes, space.embed_dims, range(1, space.depth + 1)):
        for chosen in itertools.combinations_with_replacement(widths, d):
            blocks = tuple(Block(min(h for h in space.heads if a % h == 0), a, m) for a, m in chosen)
            if lo <= vitas.flops(Arch(p, c, blocks + (None,) * (space.depth - d)), space) <= hi:
                cells.add((p, d))
                break
    return cells


def test_every_window_cell_is_found_and_drawn_inside_the_window_however_few_of_its_archs_lie_there():
    """Issue 41: tiny at 2M-4M, the stratified sampler's cells are the cells holding window archs as
    found by brute force, (patch 4, depth 4) among them though none of 200 plain draws of it lands in
    the window; in the learned phase every cell is drawn, each arch inside the window. The
    depth-balanced sampler likewise, its cells the depths of those."""
    truth = brute_force_window_cells(TINY, LO, HI)
    assert (4, 4) in truth and len(truth) >= 6
    rng = np.random.default_rng(0)
    assert np.mean([LO <= vitas.flops(vitas.draw_in_cell(TINY, rng, (4, 4)), TINY) <= HI for _ in range(1000)]) < 0.02
    for sampling, cells in (("stratified", truth), ("depth-balanced", {(None, d) for _, d in truth})):
        sampler = train.ArchSampler(TINY, 0, 0, (LO, HI), sampling=sampling, identity_shift=True)
        assert set(sampler.cells) == cells and len(sampler.cells) == len(cells)
        archs = [sampler(step, 1)[0] for step in range(800)]
        assert all(LO <= vitas.flops(a, TINY) <= HI for a in archs)
        drawn = {(a.patch_size if sampling == "stratified" else None, a.depth) for a in archs}
        assert drawn == cells


def test_a_draw_inside_the_window_reaches_every_arch_of_the_cell_there_and_no_other():
    """draw_in_window on a space small enough to list: every arch of cell (8, 2) in the window
    comes, and nothing outside the window or the cell; a cell with none in it gives None."""
    space = SearchSpace(image_size=32, in_chans=3, num_classes=10, patch_sizes=(8,), depth=3, embed_dims=(32, 48),
                        heads=(2,), attn_dims=(32, 64), mlp_dims=(64, 128))
    widths = [None] + [Block(2, a, m) for a in (32, 64) for m in (64, 128)]
    every = {Arch(8, c, blocks) for c in space.embed_dims for blocks in itertools.product(widths, repeat=3)
             if sum(b is not None for b in blocks) == 2}
    by_flops = sorted(vitas.flops(a, space) for a in every)
    lo, hi = by_flops[len(by_flops) // 4], by_flops[3 * len(by_flops) // 4]
    want = {a for a in every if lo <= vitas.flops(a, space) <= hi}
    assert 0 < len(want) < len(every)
    table, rng = vitas.block_costs(space), np.random.default_rng(0)
    got = {vitas.draw_in_window(space, rng, (8, 2), lo, hi, table) for _ in range(4000)}
    assert got == want
    assert vitas.draw_in_window(space, rng, (8, 1), 2 * by_flops[-1], 3 * by_flops[-1], table) is None


def test_window_cells_of_vitas_1g_at_one_gflop_are_those_a_uniform_arch_shows_and_the_rest_cannot_be():
    """vitas-1g at 0.9-1.1 GFLOPs: every cell window_cells keeps has a uniform arch (every block
    alike) in the window; every cell it leaves out is out of reach (its widest arch under the window
    or its narrowest above); draws of each kept cell lie inside the window."""
    lo, hi = 900_000_000, 1_100_000_000
    table = vitas.block_costs(BIG)
    cells, _ = vitas.window_cells(BIG, lambda a: lo <= vitas.flops(a, BIG) <= hi, (lo, hi), table, True, n=20)

    def cell_flops(p, d, c, block):
        return vitas.flops(Arch(p, c, (block,) * d + (None,) * (BIG.depth - d)), BIG)

    blocks = [Block(min(h for h in BIG.heads if a % h == 0), a, m) for a in BIG.attn_dims for m in BIG.mlp_dims]
    shown = {(p, d) for p, d in vitas.all_cells(BIG, True)
             if any(lo <= cell_flops(p, d, c, b) <= hi for c in BIG.embed_dims for b in blocks)}
    assert set(cells) == shown and len(shown) > 20
    widest, narrowest = BIG.max_arch().blocks[0], BIG.min_arch().blocks[0]
    for p, d in set(vitas.all_cells(BIG, True)) - shown:
        assert cell_flops(p, d, BIG.embed_dims[-1], widest) < lo or cell_flops(p, d, BIG.embed_dims[0], narrowest) > hi
    rng = np.random.default_rng(0)
    for cell in cells:
        archs = [vitas.draw_in_window(BIG, rng, cell, lo, hi, table) for _ in range(5)]
        assert all((a.patch_size, a.depth) == cell and lo <= vitas.flops(a, BIG) <= hi for a in archs)


# -----------------------------------------------------------------------------
# (5) training loop: DDP under torchrun, resume, recipes, distillation, sharing, ranks apart, retrain,
# --init-from, data, --eval

# train.py (or search.py) runs by each rank with its optimizer_step watched: a train.py run that ends
# well leaves OUT/rankR.pt, the archs of every step and the rank's final weights; every run leaves its
# stderr and exit code beside OUT (OUT-rankR.err, .code). A run into a folder named "refused" may
# exit 2; any other run that fails ends the launch (its peers would wait in a collective)
SPY = """
import os, sys, traceback, torch, train, search, runs as R
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
trained, batches, runs, step, wrap, allreduces = [], [], [], train.optimizer_step, R.distributed, []
def watched(run, micro, archs):
    runs[:] = [run]
    trained.append([a.to_dict() for a in archs])
    batches.append(micro[0][0].clone())
    return step(run, micro, archs)
def counted(*a, **k):   # every gradient bucket DDP all-reduces, counted
    ddp = wrap(*a, **k)
    def hook(group, bucket):
        allreduces.append(1)
        return default_hooks.allreduce_hook(group, bucket)
    ddp.register_comm_hook(None, hook)
    return ddp
train.optimizer_step, R.distributed = watched, counted
cleanup, R.cleanup_distributed = R.cleanup_distributed, lambda barrier=False: None   # one process group for all
argv = sys.argv[1:]
while argv:                         # several runs in one launch, "++" between them; train.py's unless search.py
    one, argv = (argv[:argv.index("++")], argv[argv.index("++") + 1:]) if "++" in argv else (argv, [])
    script, one = (one[0], one[1:]) if one[0] == "search.py" else ("train.py", one)
    trained.clear(), batches.clear(), allreduces.clear(), runs.clear()
    said = f"{one[one.index('--out') + 1]}-rank{os.environ['RANK']}"     # beside the run's folder
    with open(said + ".err", "w") as err:           # each run's stderr and exit code apart
        fd = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            (search.main if script == "search.py" else train.main)(one)
            code = 0
        except SystemExit as e:     # a refused run goes on to the next; any other failure ends the launch below
            code = e.code
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            os.dup2(fd, 2)
    open(said + ".code", "w").write(str(code))
    if code != 0 and os.path.basename(one[one.index("--out") + 1]) != "refused":
        sys.exit(code)
    if code == 0 and script == "train.py":
        torch.save({"archs": trained, "batches": batches, "model": runs[0].model.state_dict(),
                    "allreduces": len(allreduces)}, f"{runs[0].args.out}/rank{runs[0].d.rank}.pt")
cleanup(barrier=True)
"""


def two_agents(script, *argv):
    """`script` under two torchrun agents on this machine, as on two nodes: --nnodes 2, one process
    each, c10d rendezvous on 127.0.0.1 (the README's multi-node command); whether both ended with
    exit code 0, and their output."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": HERE}
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={i}",
                                "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                "--rdzv-id=vitas-test", script, *argv], cwd=HERE, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    outs = [a.communicate(timeout=300)[0] for a in agents]
    return all(a.returncode == 0 for a in agents), outs[0][-2000:] + outs[1][-2000:]


def watched_launch(folder, todo, nodes=1):
    """The runs `todo` ({name: argv}, train.py's, or search.py's after "search.py") in one launch of
    the spy (SPY: one process group; one agent with 2 processes, or `nodes` 2: two agents of one),
    each into FOLDER/name; what each rank of a train.py run trained in FOLDER/name/rankR.pt
    (watched_ranks). Every run must end with exit code 0 but "refused"'s; returns {name: each rank's
    (exit code, stderr)} (FOLDER/name-rankR.code and .err)."""
    (folder / "watched.py").write_text(SPY)
    argv = []
    for name, a in todo.items():
        script = a[:1] if a[:1] == ["search.py"] else []
        argv += ["++", *script, "--out", str(folder / name), *a[len(script):]]
    argv = argv[1:]
    if nodes == 1:
        r = torchrun(str(folder / "watched.py"), *argv)
        ok, output = r.returncode == 0, r.stderr[-3000:]
    else:
        ok, output = two_agents(str(folder / "watched.py"), *argv)
    said = {name: [tuple(f.read_text() if f.exists() else None
                         for f in (folder / f"{name}-rank{r}.code", folder / f"{name}-rank{r}.err")) for r in range(2)]
            for name in todo}
    assert ok, (output, said)              # the spy ended the launch at a failed run: its stderr is in `said`
    for name in todo:
        assert name == "refused" or all(code == "0" for code, _ in said[name]), (name, said[name])
    return said


def watched_ranks(out):
    """What each rank of a watched run into `out` trained (watched_launch)."""
    ranks = [torch.load(out / f"rank{i}.pt", weights_only=True) for i in range(2)]
    for rank in ranks:
        rank["archs"] = [tuple(Arch.from_dict(a) for a in step) for step in rank["archs"]]
    return ranks


# v1 as the authors' code trains it: two forwards (left, right) into one loss, one backward, under DDP
V1_DDP = ["--epochs", "2", "--uniform-epochs", "1", *WINDOW, "--recipe", "v1-code", *SMALL]


SANDWICH_DDP = ["--epochs", "2", "--uniform-epochs", "1", *WINDOW, "--sandwich", "1", "--distill",
                "--sharing", "cyclic", "--identity-shift", "train", *SMALL]


# drop path and MixUp draw from every rank's generator each step: a restart's test (its uninterrupted run)
RESTART_DDP = ["--epochs", "2", "--uniform-epochs", "1", *WINDOW, *SMALL, "--workers", "0", "--drop-path", "0.1",
               "--mixup", "0.8"]
COUNT = [*WINDOW, "--synthetic-size", "320", "--eval-limit", "32", "--device", "cpu"]


def ddp_search_argv(trained):
    """search.py's flags for the torchrun searches (one generation) of `trained`; --out to add."""
    argv = search_argv(trained, "")
    del argv[argv.index("--out"):argv.index("--out") + 2]
    argv[argv.index("--generations") + 1] = "1"
    return argv


RANKED = ["--rank-check", "2", "--rank-epochs", "1", "--rank-seeds", "1"]


@pytest.fixture(scope="module")
def ddp_runs(trained, tmp_path_factory):
    """Several runs in one 2-process torchrun launch (watched_launch): first "refused", a run into a
    folder another process holds, (its folder, {"holder": its pid, "before"/"after": the folder's
    files, "said": each rank's (exit code, stderr)}); then train.py's V1_DDP, V1_DDP at batch 16 x
    --accum-steps 2, SANDWICH_DDP, RESTART_DDP, a picture's folder with RandAugment at 0 and 2
    loader workers, one epoch to resume under another process count, {name: (its folder, what each
    rank trained)}; and search.py on `trained` with a rank check, "search": (its folder, None)."""
    out = tmp_path_factory.mktemp("ddp")
    picture = ["--data", one_picture_folder(out / "data"), "--randaug", "9", "--reprob", "0.5", "--holdout", "0",
               "--epochs", "1", "--batch-size", "8", "--eval-limit", "8", "--device", "cpu"]
    todo = {"refused": RUN, "ddp": V1_DDP, "accum": [*V1_DDP, "--batch-size", "16", "--accum-steps", "2"],
            "sandwich": SANDWICH_DDP, "restart": RESTART_DDP, "w0": [*picture, "--workers", "0"],
            "w2": [*picture, "--workers", "2"], "count": [*COUNT, "--epochs", "1", "--batch-size", "16"],
            "search": ["search.py", *ddp_search_argv(trained), *RANKED]}
    p = holder(out / "refused", 600)
    before = files_of(out / "refused")
    try:
        said = watched_launch(out, todo)
        after = files_of(out / "refused")
    finally:
        p.kill()
        p.wait()
    return {**{name: (out / name, watched_ranks(out / name)) for name in todo if name not in ("search", "refused")},
            "search": (out / "search", None),
            "refused": (out / "refused", {"holder": p.pid, "before": before, "after": after, "said": said["refused"]})}


@pytest.fixture(scope="module")
def two_nodes(trained, tmp_path_factory):
    """V1_DDP and the search of ddp_runs (without its rank check) under two torchrun agents of one
    process each (two nodes, one launch): {"ddp": (its folder, what each rank trained), "search":
    (its folder, None)}."""
    out = tmp_path_factory.mktemp("nodes")
    watched_launch(out, {"ddp": V1_DDP, "search": ["search.py", *ddp_search_argv(trained)]}, nodes=2)
    return {"ddp": (out / "ddp", watched_ranks(out / "ddp")), "search": (out / "search", None)}


@pytest.mark.slow
def test_two_process_torchrun_trains_the_same_arch_on_every_rank_and_two_nodes_train_as_one(ddp_runs, two_nodes):
    """Issue 39: two torchrun agents (two nodes of one process) end with the weights, archs and log
    of one agent with two processes, written once (global rank 0)."""
    (out, ranks), (node_out, nodes) = ddp_runs["ddp"], two_nodes["ddp"]
    for one, two in zip(ranks, nodes):
        assert one["archs"] == two["archs"] and one["model"].keys() == two["model"].keys()
        assert all(torch.equal(one["model"][k], two["model"][k]) for k in one["model"])
    logs = [[{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "provenance", "seconds")}
             for line in open(folder / "log.jsonl")] for folder in (out, node_out)]
    assert logs[0] == logs[1] and [r["epoch"] for r in logs[1]] == [1, 2]
    for folder in (out, node_out):                      # DDP's timer saw the gradient all-reduce
        for r in map(json.loads, open(folder / "log.jsonl")):
            assert 0 <= r["seconds"]["all_reduce_exposed"] <= r["seconds"]["all_reduce"] > 0
    assert len(ranks[0]["archs"]) == 18 and ranks[0]["archs"] == ranks[1]["archs"]
    assert len(set(ranks[0]["archs"])) > 10                       # a new sub-network (almost) every step
    assert all(len(step) == 1 for step in ranks[0]["archs"])      # v1: one a step
    for k, v in ranks[0]["model"].items():
        assert torch.equal(v, ranks[1]["model"][k]), k
    ck = runs.load_checkpoint(out / "checkpoint.pt")
    for k, v in ck["model"].items():                              # saved without DDP's "module." prefix
        assert torch.equal(v, ranks[0]["model"][k])
    assert SearchSpace(**ck["space"]) == TINY and ck["identity_prob"] is not None
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["epoch"] for r in log] == [1, 2] and log[0]["identity_prob"] == 0.5
    assert set(log[1]["val"]) == {"largest", "smallest", "middle"}


@pytest.mark.slow
def test_sandwich_trains_the_largest_and_smallest_every_step_on_every_rank(ddp_runs):
    out, ranks = ddp_runs["sandwich"]
    assert len(ranks[0]["archs"]) == 18 and ranks[0]["archs"] == ranks[1]["archs"]
    ends = record.reported_archs(TINY, (LO, HI))
    for largest, smallest, drawn in ranks[0]["archs"]:
        assert (largest, smallest) == (ends["largest"], ends["smallest"])
        assert drawn == vitas.shift_identities(drawn)
    assert all(LO <= vitas.flops(a, TINY) <= HI for a in ends.values())
    for k, v in ranks[0]["model"].items():                       # every parameter all-reduced, also the ones
        assert torch.equal(v, ranks[1]["model"][k]), k           # only an earlier pass of the step used
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert {k: v["arch"] for k, v in log[-1]["reported"].items()} == {k: a.to_dict() for k, a in ends.items()}


@pytest.mark.parametrize("recipe", [["--recipe", "v1"], [], ["--sharing", "cyclic", "--sandwich", "2", "--no-distill"]],
                         ids=["v1", "default", "cyclic-sandwich"])
@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch, recipe):
    common = ["--epochs", "2", "--uniform-epochs", "1", *WINDOW, "--save-every", "3",
              "--drop-path", "0.1", "--mixup", "0.8", *recipe, *SMALL, "--synthetic-size", "320"]
    whole = train_run(tmp_path / "a", *common)
    step = train.optimizer_step

    def crash_at_14(run, *a):   # the process dies during step 14; the last checkpoint is step 12's
        if run.step == 13:
            raise KeyboardInterrupt
        return step(run, *a)
    monkeypatch.setattr(train, "optimizer_step", crash_at_14)
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path / "b", *common)
    monkeypatch.undo()
    assert runs.load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 12     # mid-epoch 2 (9 steps each)
    resumed = train_run(tmp_path / "b", *common)
    a, b = (runs.load_checkpoint(tmp_path / x / "checkpoint.pt")["model"] for x in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["loss"] == whole["loss"] and resumed["val"] == whole["val"]
    # re-running a finished run changes nothing and reports its last epoch
    assert train_run(tmp_path / "b", *common) == resumed


@pytest.mark.slow
def test_loader_workers_persist_any_count_trains_the_same_weights_and_a_resume_is_exact(tmp_path, monkeypatch):
    """Retrains on an image folder with RandAugment and random erasing on: one loader worker
    trained uninterrupted, and two workers interrupted mid-epoch 2 then resumed, end with the same
    weights (an image's augmentation is seeded by seed, epoch and index); each run's workers serve
    both epochs (persistent: the same processes)."""
    root = image_folder(tmp_path / "data", ("cat", "dog"), 24, 4)
    (tmp_path / "arch.json").write_text(json.dumps(TINY.min_arch().to_dict()))
    pids = tmp_path / "pids"
    item = data.SeededItems.__getitem__

    def spied(self, key):       # which process served which epoch, written from the workers
        with open(pids, "a") as f:
            f.write(f"{key[0]} {os.getpid()}\n")
        return item(self, key)
    monkeypatch.setattr(data.SeededItems, "__getitem__", spied)
    common = ["--arch", str(tmp_path / "arch.json"), "--data", str(root), "--batch-size", "8", "--epochs", "2",
              "--save-every", "2", "--device", "cpu", "--randaug", "9", "--reprob", "0.25"]
    train_run(tmp_path / "one", *common, "--workers", "1")
    served = {}
    for line in pids.read_text().splitlines():
        served.setdefault(int(line.split()[0]), set()).add(int(line.split()[1]))
    assert served[0] == served[1] and len(served[0]) == 1 and os.getpid() not in served[0]
    step = train.optimizer_step

    def crash_at_9(run, *a):    # 6 steps an epoch: the last checkpoint is step 8's, mid-epoch 2
        if run.step == 8:
            raise KeyboardInterrupt
        return step(run, *a)
    monkeypatch.setattr(train, "optimizer_step", crash_at_9)
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path / "two", *common, "--workers", "2")
    monkeypatch.setattr(train, "optimizer_step", step)
    assert runs.load_checkpoint(tmp_path / "two" / "checkpoint.pt")["step"] == 8
    train_run(tmp_path / "two", *common, "--workers", "2")
    a, b = (runs.load_checkpoint(tmp_path / x / "checkpoint.pt")["model"] for x in ("one", "two"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train.parse_args(["--data", str(root)]).workers >= 1 and train.parse_args([]).workers == 0   # defaults


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    argv = ["--out", str(tmp_path), *SMALL]
    assert run_main(train, [*argv, "--epochs", "1"], capsys)[0] == 0
    before = runs.load_checkpoint(tmp_path / "checkpoint.pt")
    monkeypatch.setattr(train.F, "cross_entropy", lambda out, *a, **k: out.sum() * float("nan"))
    code, err = run_main(train, [*argv, "--epochs", "2"], capsys)
    assert code == 2 and "non-finite loss" in err and "Traceback" not in err
    after = runs.load_checkpoint(tmp_path / "checkpoint.pt")
    assert after["step"] == before["step"] == 18
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])


@pytest.mark.slow
def test_recipe_v1_is_the_plain_v1_loop_bit_for_bit(tmp_path):
    """--recipe v1 against the paper's v1 step written out here: one arch a step, drawn from (seed, step)
    at the solved identity probability, its left and right slices each with its own loss, one AdamW step."""
    lo, hi = LO, HI
    args = train.parse_args(["--out", str(tmp_path), "--recipe", "v1", "--epochs", "1", "--uniform-epochs", "0",
                             *WINDOW, *SMALL])
    train.train(args)
    torch.manual_seed(0)
    datasets = data.build_datasets(args, TINY.image_size)
    net = vitas.SuperTransformer(TINY)
    opt = torch.optim.AdamW(runs.param_groups(net, 0.05), lr=args.lr)
    steps = len(datasets.train) // 32
    sched = torch.optim.lr_scheduler.LambdaLR(opt, runs.warmup_cosine(steps, steps, args.min_lr / args.lr))
    p = vitas.solve_identity_prob(TINY, lo, hi)
    order = DistributedSampler(datasets.train, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    order.set_epoch(0)
    loader = DataLoader(datasets.train, batch_size=32, sampler=order, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    for step, (x, y) in enumerate(loader):
        rng = np.random.default_rng([0, 0, step])
        for _ in range(100):
            arch = TINY.sample(rng, p)
            if lo <= vitas.flops(arch, TINY) <= hi:
                break
        opt.zero_grad()
        for side in ("left", "right"):
            F.cross_entropy(net(x, arch, side), y, label_smoothing=0.1).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
    got = runs.load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert step == 17 and all(torch.equal(got[k], v) for k, v in net.state_dict().items())


def test_distillation_target_carries_no_gradient():
    """train_step's gradient with --distill equals labels for the largest plus the soft predictions of
    the largest, detached, for the smallest (computed here by hand)."""
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(TINY))
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    big, small = TINY.max_arch(), TINY.min_arch()
    args = argparse.Namespace(amp=False, distill=True, smoothing=0.1, bilateral_loss="two")
    loss, passes = train.train_step(net, x, y, [big, small], ("left",), args, runs.Dist())
    got = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    teacher = net(x, big).detach()
    expect = F.cross_entropy(net(x, big), y, label_smoothing=0.1) + \
        -(teacher.softmax(-1) * net(x, small).log_softmax(-1)).sum(-1).mean()
    expect.backward()
    assert passes == 2 and loss.item() == pytest.approx(expect.item(), rel=1e-6)
    for k, p in net.named_parameters():
        assert (p.grad is None) == (k not in got), k
        if p.grad is not None:
            assert torch.allclose(got[k], p.grad, atol=1e-6), k


def test_summed_bilateral_loss_is_one_loss_on_the_sum_of_both_slices_logits():
    """--bilateral-loss summed (the authors' code) against its definition written out here."""
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(TINY))
    x, y, arch = torch.randn(6, 3, 32, 32), torch.arange(6) % 10, TINY.max_arch()
    args = argparse.Namespace(amp=False, distill=False, smoothing=0.1, bilateral_loss="summed")
    loss, losses = train.train_step(net, x, y, [arch], vitas.SIDES, args, runs.Dist())
    got = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    expect = F.cross_entropy(net(x, arch, "left") + net(x, arch, "right"), y, label_smoothing=0.1)
    expect.backward()
    assert losses == 1 and loss.item() == pytest.approx(expect.item(), rel=1e-6)
    assert all(torch.allclose(got[k], p.grad, atol=1e-6) for k, p in net.named_parameters() if p.grad is not None)
    two = train.train_step(net, x, y, [arch], vitas.SIDES,
                           argparse.Namespace(**{**vars(args), "bilateral_loss": "two"}), runs.Dist())
    # the paper's text: two losses, another objective
    assert two[1] == 2 and abs(two[0].item() - loss.item()) > 1e-3


@pytest.mark.parametrize("sharing, each_step", [("left", ["left"]), ("bilateral", ["left", "right"]),
                                               ("cyclic", ["cyclic"])])
def test_each_sharing_trains_its_own_sides_every_step(monkeypatch, tmp_path, sharing, each_step):
    """A short train.py run with --sharing left, bilateral or cyclic, every forward of the
    super-transformer watched: in training mode each step runs the sharing's sides, in order (left
    only; left then right; cyclic only), and nothing else."""
    seen, forward = [], vitas.SuperTransformer.forward

    def watched(net, x, arch, side="left"):
        if net.training:
            seen.append(side)
        return forward(net, x, arch, side)
    monkeypatch.setattr(vitas.SuperTransformer, "forward", watched)
    monkeypatch.setattr(train.record, "plot_curves", lambda *a: None)          # no picture needed
    record = train_run(tmp_path, "--sharing", sharing, "--epochs", "1", "--synthetic-size", "120", "--batch-size", "32",
                       "--eval-limit", "8", "--device", "cpu")
    assert record["step"] == 3 and seen == each_step * 3, seen


def one_picture_folder(root, n=32):
    """An ImageFolder (train/ and val/, two classes) whose images are all one picture: two ranks'
    batches then differ only by how each rank augments them."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for split, k in (("train", n), ("val", 8)):
        for cls in ("a", "b"):
            os.makedirs(root / split / cls, exist_ok=True)
            for i in range(k // 2):
                picture.save(root / split / cls / f"{i}.png")
    return str(root)


@pytest.mark.slow
def test_each_rank_augments_apart_and_every_rank_draws_the_same_archs(ddp_runs):
    """Under 2-process torchrun, RandAugment and random erasing of one picture give each rank other
    batches at every step (in this process, --workers 0, and in loader workers, 2), while the archs
    drawn are equal."""
    for workers in ("w0", "w2"):
        _, ranks = ddp_runs[workers]
        assert len(ranks[0]["batches"]) == 2 and ranks[0]["archs"] == ranks[1]["archs"]
        assert all(not torch.equal(a, b) for a, b in zip(ranks[0]["batches"], ranks[1]["batches"]))


def test_rank_zero_keeps_its_stream_and_rank_one_gets_its_own():
    """seed_rank leaves rank 0's generators as seeded; rank 1's draw other numbers, the same each time."""
    draws = []
    for rank in (0, 1, 1):
        runs.seed_everything(3)
        runs.seed_rank(3, rank)
        draws.append((torch.rand(4), np.random.rand(4), random.random()))
    runs.seed_everything(3)
    assert torch.equal(draws[0][0], torch.rand(4)) and not torch.equal(draws[0][0], draws[1][0])
    assert torch.equal(draws[1][0], draws[2][0]) and (draws[1][1] == draws[2][1]).all() and draws[1][2] == draws[2][2]


@pytest.mark.slow
def test_a_resume_under_another_process_count_keeps_the_global_batch_or_stops_naming_both(ddp_runs, capsys):
    """Trained by 2 processes x 16 (ddp_runs' "count"), resumed by one: with --batch-size 16 refused in
    one line naming both sizes and the fix; with --batch-size 32 (the same global batch) it goes on,
    saying it is not bit-exact."""
    out, _ = ddp_runs["count"]
    argv = [*COUNT, "--out", str(out)]
    code, err = run_main(train, [*argv, "--epochs", "2", "--batch-size", "16"], capsys)
    assert code == 2 and "Traceback" not in err and "2 process(es) x batch 16" in err and "--batch-size 32" in err
    train.main([*argv, "--epochs", "2", "--batch-size", "32"])
    ck = runs.load_checkpoint(out / "checkpoint.pt")
    assert ck["world"] == 1 and ck["epoch"] == 2 and "not bit-exact" in capsys.readouterr().out


def test_retrain_from_arch_json(tmp_path):
    arch = Arch(8, 48, (Block(2, 48, 128), None, Block(4, 32, 64), None, None, Block(2, 64, 192)))
    (tmp_path / "arch.json").write_text(json.dumps(arch.to_dict()))
    res = train_run(tmp_path / "r", "--arch", str(tmp_path / "arch.json"), "--epochs", "1", *SMALL)
    assert 0 <= res["val"]["model"]["top1"] <= 100
    assert not (tmp_path / "r" / "curves.png").exists()        # one epoch: no curve to draw
    ck = runs.load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ck["mode"] == "retrain" and Arch.from_dict(ck["arch"]) == arch
    vit = vitas.ViT(arch, SearchSpace(**ck["space"]))
    vit.load_state_dict(ck["model"])


@pytest.mark.slow
def test_retrain_can_start_from_the_inherited_weights(trained, tmp_path, capsys):
    arch = Arch(4, 48, (Block(2, 48, 128), None, Block(4, 32, 64), None, None, None))
    (tmp_path / "arch.json").write_text(json.dumps(arch.to_dict()))
    code, err = run_main(train, ["--arch", str(tmp_path / "arch.json"), "--init-from", str(trained),
                                 "--out", str(tmp_path / "r"), "--epochs", "1", "--lr", "1e-12", "--min-lr", "1e-13",
                                 *SMALL], capsys)
    assert code == 0, err
    ck = runs.load_checkpoint(trained)
    assert ck["args"]["sharing"] == "bilateral"                    # the first side it trained: left
    # the expectation by name from the checkpoint's state dict (vit_state_by_name), not by vitas.export
    inherited = vit_state_by_name(ck["model"], SearchSpace(**ck["space"]), arch, "left")
    retrained = runs.load_checkpoint(tmp_path / "r" / "checkpoint.pt")["model"]
    assert retrained.keys() == inherited.keys()
    assert all(torch.allclose(inherited[k], retrained[k], atol=1e-6) for k in inherited)


@pytest.mark.slow
def test_init_from_another_space_is_refused_in_one_line(trained, tmp_path, capsys):
    (tmp_path / "arch.json").write_text(json.dumps(TINY.min_arch().to_dict()))
    code, err = run_main(train, ["--arch", str(tmp_path / "arch.json"), "--init-from", str(trained),
                                 "--space", "vitas-1g", "--out", str(tmp_path / "r"), *SMALL], capsys)
    assert code == 2 and "--space vitas-1g differs" in err and "(tiny)" in err and len(err.strip().splitlines()) == 1


def test_data_seed_keeps_the_data_and_split_while_seed_changes_the_training():
    args = lambda *a: train.resolve_recipe(train.parse_args([*a, *SMALL]))
    ref, other = (data.build_datasets(a, 32) for a in (args("--seed", "0"), args("--seed", "5", "--data-seed", "0")))
    assert (torch.equal(ref.train.dataset.images, other.train.dataset.images)
            and ref.holdout.indices == other.holdout.indices)
    assert not torch.equal(ref.train.dataset.images, data.build_datasets(args("--seed", "5"), 32).train.dataset.images)
    ck = {"args": vars(args("--seed", "3")), "world": 1}
    argv = rankcheck.alone_argv(ck, 2, "cpu", 1, seed=2)
    assert argv[argv.index("--seed") + 1] == "5" and argv[argv.index("--data-seed") + 1] == "3"


def test_holdout_by_count_or_fraction(capsys):
    assert data.holdout_size(6000, 0.1) == 600 and data.holdout_size(6000, 2000) == 2000
    tr, ho = data.holdout_split(100, 30, seed=0)
    assert len(ho) == 30 and sorted(tr + ho) == list(range(100))
    with pytest.raises(cli.UserError, match="--holdout"):
        data.holdout_size(500, 500)
    for bad in ("1.5", "-0.1", "x"):
        code, err = run_main(train, ["--holdout", bad], capsys)
        assert code == 2 and "--holdout" in err and "Traceback" not in err


def test_holdout_extra_adds_generated_images_to_the_held_out_split_only(tmp_path, capsys):
    """--holdout-extra N (search.py): the same training images and held-out split, then N images
    none of which is a training image; on an image folder, a one-line error."""
    args = vars(train.resolve_recipe(train.parse_args(["--synthetic-size", "200", "--data-seed", "3"])))
    base = data.build_datasets(argparse.Namespace(**args), 16)
    more = data.build_datasets(argparse.Namespace(**{**args, "holdout_extra": 30}), 16)
    assert base.train.indices == more.train.indices and base.train.dataset.images.equal(more.train.dataset.images)
    assert len(more.holdout) == len(base.holdout) + 30 and data.bad_images(more, runs.Dist()) == 0
    assert all(more.holdout[i][0].equal(base.holdout[i][0]) for i in range(len(base.holdout)))
    seen = {base.train[i][0].numpy().tobytes() for i in range(len(base.train))}
    extra = [more.holdout[len(base.holdout) + i] for i in range(30)]
    assert len(seen) == len(base.train) and not seen & {x.numpy().tobytes() for x, _ in extra}
    assert len({y for _, y in extra}) > 1
    image_folder(tmp_path / "data", ("cat", "dog"), 6, 2)
    with pytest.raises(cli.UserError, match="--holdout-extra .* train.py --holdout"):
        data.build_datasets(argparse.Namespace(**{**args, "data": str(tmp_path / "data"), "holdout_extra": 5}), 16)


def test_synthetic_images_are_normalised_as_torchvisions_evaluation_transform(monkeypatch):
    """The synthetic data is scaled and normalised in data.py (torchvision not imported for it):
    the floats torchvision's evaluation transform gives the same uint8 images."""
    from torchvision.transforms import v2 as T
    ref = T.Compose([T.Resize([16, 16], antialias=True), T.CenterCrop(16), T.ToImage(),
                     T.ToDtype(torch.float32, scale=True), T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        monkeypatch.setitem(sys.modules, name, None)                          # importing any of it would fail
    args = train.resolve_recipe(train.parse_args(["--synthetic-size", "100"]))
    ds = data.build_datasets(args, 16)
    assert args.mixup == args.cutmix == 0 and data.mix_transform(args, 10) is None
    assert ds.holdout.dataset is ds.train.dataset                            # held out of the training images
    for images in (ds.train.dataset, ds.val):
        for i in range(len(images)):
            x, y = images[i]
            assert torch.equal(x, ref(images.images[i])) and y == int(images.labels[i])


def test_image_folder_data_its_class_count_and_no_generated_held_out_images(tmp_path, capsys):
    """An image folder's class count sizes the head; the search scores on its held-out images
    alone (no --holdout-extra default there)."""
    image_folder(tmp_path / "data", ("cat", "dog", "eel"), 12, 4)
    code, err = run_main(train, ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--batch-size", "8", "--device", "cpu"], capsys)
    assert code == 0, err
    ck = runs.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck["space"]["num_classes"] == 3 and ck["model"]["head.weight"].shape[0] == 3
    args = search.parse_args(["--ckpt", str(tmp_path / "run" / "checkpoint.pt"), *WINDOW, "--device", "cpu"])
    assert search.load_supernet(args, runs.Dist())[3] == round(36 * 0.1) and args.holdout_extra == 0


@pytest.mark.slow
def test_the_searchs_default_scores_on_generated_images_beside_a_synthetic_held_out_split(trained):
    """search.py on the synthetic data, without --holdout-extra: cli.HOLDOUT_EXTRA generated images
    after the checkpoint's held-out split, the first ones scored as with --holdout-extra 0."""
    arch = TINY.max_arch()
    scored = {}
    for extra in ([], ["--holdout-extra", "0"]):
        args = search.parse_args(["--ckpt", str(trained), *WINDOW, "--device", "cpu", "--eval-size", "200", *extra])
        _, _, fitness, n = search.load_supernet(args, runs.Dist())
        scored[args.holdout_extra] = (n, fitness(arch))
        args.eval_size = None
        assert search.load_supernet(args, runs.Dist())[3] == 200 + args.holdout_extra     # 10% of 2,000, then more
    assert set(scored) == {cli.HOLDOUT_EXTRA, 0} and scored[0] == scored[cli.HOLDOUT_EXTRA]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_corrupt_image_stops_the_run_in_one_line_naming_it_or_is_skipped_and_counted(workers, tmp_path, capsys):
    root = image_folder(tmp_path / "data", ("cat", "dog"), 8, 2)
    (tmp_path / "arch.json").write_text(json.dumps(TINY.min_arch().to_dict()))
    flags = ["--arch", str(tmp_path / "arch.json"), "--data", str(root), "--batch-size", "4", "--device", "cpu",
             "--log-every", "1000", "--workers", workers]
    train_run(tmp_path / "r", "--epochs", "1", *flags)
    step = runs.load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"]
    bad = root / "train" / "dog" / "3.png"
    bad.write_bytes(b"not an image")
    code, err = run_main(train, ["--out", str(tmp_path / "r"), "--epochs", "2", *flags], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"cannot read image {bad} (UnidentifiedImageError" in err and "--skip-bad-images" in err
    assert runs.load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"] == step          # the last one kept
    last = train_run(tmp_path / "r", "--epochs", "2", "--skip-bad-images", *flags)
    assert last["bad_images"] == 1 and last["step"] == 2 * step      # read once in the epoch, replaced: same length


HANG = """
import sys, time, train
step = train.optimizer_step
def hung(run, micro, archs):       # rank 1 stops answering at step 2
    if run.d.rank == 1 and run.step == 1:
        time.sleep(120)
    return step(run, micro, archs)
train.optimizer_step = hung
train.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_collective_past_the_timeout_ends_the_run_with_one_line_naming_rank_and_step(tmp_path):
    (tmp_path / "hang.py").write_text(HANG)
    (tmp_path / "arch.json").write_text(json.dumps(TINY.min_arch().to_dict()))
    start = time.time()
    out = torchrun(str(tmp_path / "hang.py"), "--arch", str(tmp_path / "arch.json"), *SMALL, "--synthetic-size", "200",
                   "--epochs", "1", "--timeout", "3", "--out", str(tmp_path / "r"))
    assert out.returncode != 0 and time.time() - start < 60
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: rank 0 of 2: a collective waited past --timeout 3 s at step 2: another rank")


@pytest.mark.slow
def test_a_corrupt_image_one_rank_meets_ends_every_rank_within_a_minute(tmp_path):
    root = image_folder(tmp_path / "data", ("cat", "dog"), 8, 2)
    (root / "train" / "cat" / "5.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "arch.json").write_text(json.dumps(TINY.min_arch().to_dict()))
    start = time.time()
    out = torchrun("train.py", "--arch", str(tmp_path / "arch.json"), "--data", str(root), "--batch-size", "4",
                   "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "r"))
    assert out.returncode != 0 and time.time() - start < 60
    assert f"error: cannot read image {root / 'train' / 'cat' / '5.png'}" in out.stderr
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_eval_of_a_checkpoint_equals_what_training_logged(trained, tmp_path, capsys):
    arch = Arch(8, 48, (Block(2, 48, 128), None, Block(4, 32, 64), None, None, Block(2, 64, 192)))
    (tmp_path / "arch.json").write_text(json.dumps(arch.to_dict()))
    last = train_run(tmp_path / "r", "--arch", str(tmp_path / "arch.json"), "--epochs", "1", *SMALL)
    code, err = run_main(train, ["--eval", str(tmp_path / "r" / "checkpoint.pt"), "--device", "cpu"], capsys)
    assert code == 0, err
    res = json.load(open(tmp_path / "r" / "eval.json"))
    assert res["val"]["model"] == last["val"]["model"] and "holdout" not in res     # a retrain holds out none
    # a super-transformer checkpoint and one of its reported archs: the left slice as logged
    log = [json.loads(line) for line in open(trained.parent / "log.jsonl")]
    (tmp_path / "largest.json").write_text(json.dumps(log[-1]["reported"]["largest"]["arch"]))
    code, err = run_main(train, ["--eval", str(trained), "--arch", str(tmp_path / "largest.json"),
                                 "--device", "cpu"], capsys)
    assert code == 0, err
    res = json.load(open(trained.parent / "eval-largest.json"))
    assert (res["val"]["left"] == log[-1]["val"]["largest"]
            and set(res["val"]) == set(res["holdout"]) == {"left", "right"})
    assert res["holdout"]["left"]["n"] == 200
    code, err = run_main(train, ["--eval", str(trained), "--device", "cpu"], capsys)
    assert code == 2 and "--arch" in err


@pytest.mark.slow
def test_eval_of_an_arch_with_identities_between_blocks_scores_its_shifted_path(trained, tmp_path, capsys):
    """--eval CKPT --arch A.json on a checkpoint trained with identity shifting (the default), A's
    identities between its real blocks: eval-A.json's val top-1 and loss per side are those of A's
    shifted path through the super-transformer (real blocks first), computed here."""
    ck = runs.load_checkpoint(trained)
    assert ck["args"]["identity_shift"] == "train"
    arch = Arch(8, 48, (None, Block(2, 48, 128), None, Block(4, 32, 64), None, Block(2, 64, 192)))
    shifted = Arch(8, 48, (Block(2, 48, 128), Block(4, 32, 64), Block(2, 64, 192), None, None, None))
    assert vitas.shift_identities(arch) == shifted
    (tmp_path / "between.json").write_text(json.dumps(arch.to_dict()))
    code, err = run_main(train, ["--eval", str(trained), "--arch", str(tmp_path / "between.json"), "--device", "cpu"],
                         capsys)
    assert code == 0, err
    res = json.load(open(trained.parent / "eval-between.json"))
    net = vitas.SuperTransformer(SearchSpace(**ck["space"])).eval()
    net.load_state_dict(ck["model"])
    assert ck["args"]["eval_limit"] == 64                                     # val: its first 64 images
    val = data.build_datasets(argparse.Namespace(**ck["args"]), 32).val
    x, y = map(torch.stack, zip(*[(img, torch.tensor(label)) for img, label in (val[i] for i in range(64))]))
    with torch.no_grad():
        for side in ("left", "right"):
            logits = net(x, shifted, side)
            assert res["val"][side]["n"] == 64
            assert res["val"][side]["top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
            assert res["val"][side]["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


# a space of one's own: 72 px (the resize-and-crop evaluation transform), 3 block positions
OWN = {"image_size": 72, "in_chans": 3, "num_classes": 10, "patch_sizes": [12, 24], "depth": 3, "embed_dims": [16, 24],
       "heads": [2, 4], "attn_dims": [8, 16], "mlp_dims": [32, 48]}


@pytest.mark.slow
def test_a_space_file_through_train_search_retrain_export_load_and_the_readmes_example(tmp_path, capsys):
    classes = ["cat", "dog", "eel"]
    image_folder(tmp_path / "data", classes, 8, 4, size=(80, 96), ext="jpg")
    (tmp_path / "own.json").write_text(json.dumps(OWN))
    window, runs_ = ["--flops-min", "0.3M", "--flops-max", "0.6M"], tmp_path / "runs"
    common = ["--data", str(tmp_path / "data"), "--batch-size", "8", "--device", "cpu", "--log-every", "1000"]
    train_run(runs_ / "super", "--space", str(tmp_path / "own.json"), "--epochs", "1", *window, "--holdout", "6",
              *common)
    train_run(runs_ / "super", "--epochs", "2", *window, "--holdout", "6", *common)     # resumed: no --space
    ck = runs.load_checkpoint(runs_ / "super" / "checkpoint.pt")
    assert ck["space"] == {**OWN, "num_classes": 3} and ck["step"] == 2 * ck["steps_per_epoch"]
    code, err = run_main(search, ["--ckpt", str(runs_ / "super" / "checkpoint.pt"), *window, "--population", "4",
                                  "--generations", "1", "--out", str(runs_ / "search"), "--device", "cpu"], capsys)
    assert code == 0, err
    assert json.load(open(runs_ / "search" / "best_arch.json"))["space"] == ck["space"]
    assert json.load(open(runs_ / "search" / "search.json"))["space"] == ck["space"]
    train_run(runs_ / "retrain", "--arch", str(runs_ / "search" / "best_arch.json"), "--epochs", "1", *common)
    retrained = runs.load_checkpoint(runs_ / "retrain" / "checkpoint.pt")
    assert retrained["space"] == ck["space"] and retrained["classes"] == classes
    code, err = run_main(train, ["--export", str(runs_ / "retrain" / "checkpoint.pt"), "--side", "left"], capsys)
    assert code == 2 and "leave --side out" in err
    for flags in (["--export", str(runs_ / "retrain" / "checkpoint.pt")],
                  ["--eval", str(runs_ / "retrain" / "checkpoint.pt"), "--device", "cpu"]):
        code, err = run_main(train, flags, capsys)
        assert code == 0, err
    vit, info = vitas.load(runs_ / "retrain" / "export")
    assert not vit.training and info["arch"] == retrained["arch"] and info["classes"] == classes
    # what the checkpoint's ViT predicts on each val image through data.py's evaluation transform
    net = vitas.ViT(Arch.from_dict(retrained["arch"]), SearchSpace(**retrained["space"])).eval()
    net.load_state_dict(retrained["model"])
    prep = data.image_transforms(72, False, None)
    val = sorted((tmp_path / "data" / "val").glob("*/*.jpg"))
    os.makedirs(tmp_path / "photos")
    for path in val:
        os.symlink(path, tmp_path / "photos" / f"{path.parent.name}-{path.name}")
    with torch.no_grad():
        truth = {f"photos/{p.parent.name}-{p.name}": classes[net(prep(Image.open(p).convert("RGB"))[None]).argmax()]
                 for p in val}
    # the README's example, as written, in a fresh process: the same prediction for every image
    out = subprocess.run([sys.executable, "-c", readme_block("vitas.load(")], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": HERE}, timeout=120)
    assert out.returncode == 0, out.stderr
    said = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()}
    assert said == truth
    # and their top-1 is what train.py --eval reported for the checkpoint
    top1 = 100 * np.mean([said[k] == k.split("/")[1].split("-")[0] for k in said])
    assert json.load(open(runs_ / "retrain" / "eval.json"))["val"]["model"]["top1"] == pytest.approx(top1)


@pytest.mark.slow
def test_export_of_a_slice_computes_the_super_transformer_on_its_side(trained, tmp_path, capsys):
    ck = runs.load_checkpoint(trained)
    arch = Arch(8, 48, (None, Block(2, 48, 128), None, Block(4, 32, 64), None, None))
    (tmp_path / "mine.json").write_text(json.dumps(arch.to_dict()))
    code, err = run_main(train, ["--export", str(trained), "--arch", str(tmp_path / "mine.json"), "--side", "right"],
                         capsys)
    assert code == 0, err
    vit, info = vitas.load(trained.parent / "export-mine")
    net = vitas.SuperTransformer(SearchSpace(**ck["space"])).eval()
    net.load_state_dict(ck["model"])
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    shifted = vitas.shift_identities(arch)             # the path that scores it (identity shifting)
    assert info["arch"] == shifted.to_dict() and info["side"] == "right" and info["classes"] == list("0123456789")
    with torch.no_grad():
        assert torch.allclose(vit(x), net(x, shifted, "right"), atol=1e-5)
        assert not torch.allclose(vit(x), net(x, shifted, "left"), atol=1e-3)
    assert info["transform"] == {"resize": [32, 32], "crop": 32, "mean": list(data.IMAGENET_MEAN),
                                 "std": list(data.IMAGENET_STD)}
    code, err = run_main(train, ["--export", str(trained), "--arch", str(tmp_path / "mine.json"), "--side", "cyclic"],
                         capsys)
    assert code == 2 and "left and right only" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_missing_matplotlib_is_one_note_and_never_fails_a_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib now raises ImportError
    monkeypatch.setattr(train.record, "_noted", set())
    train.main(["--out", str(tmp_path), "--epochs", "2", *SMALL])
    out = capsys.readouterr().out
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "curves.png").exists()
    assert out.count("matplotlib is not installed, so no curves.png was drawn") == 1 and "done: 36 steps" in out

@pytest.mark.slow
def test_a_retrain_holds_out_nothing_unless_asked_and_keeps_its_best_epoch_beside_the_last(tmp_path):
    """Issue 40: --arch trains on every training image (--holdout 0.2 still holds some out; a
    super-transformer 0.1); best.pt is the checkpoint of the epoch of highest val top-1 in
    log.jsonl, checkpoint.pt the last; a longer rerun resumes from the last and keeps the best of
    all its epochs; --eval of best.pt gives that epoch's val top-1."""
    assert train.resolve_recipe(train.parse_args([])).holdout == 0.1
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(json.dumps(Arch(8, 32, (Block(2, 32, 64),) + (None,) * 5).to_dict()))
    for extra, want in (([], 0), (["--holdout", "0.2"], 0.2)):
        assert train.resolve_recipe(train.parse_args(["--arch", str(arch_path), *extra])).holdout == want
    out = tmp_path / "retrain"
    argv = ["--arch", str(arch_path), *SMALL, "--synthetic-size", "320", "--lr", "5e-3"]
    for epochs in ("3", "5"):
        train_run(out, *argv, "--epochs", epochs)
    last, best = (runs.load_checkpoint(out / name) for name in ("checkpoint.pt", "best.pt"))
    top1 = [json.loads(line)["val"]["model"]["top1"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(top1) == 5 and last["epoch"] == 5 and last["args"]["holdout"] == 0
    assert best["epoch"] == 1 + int(np.argmax(top1)) and best["best_top1"] == last["best_top1"] == max(top1)
    datasets = data.build_datasets(argparse.Namespace(**last["args"]), TINY.image_size)
    assert len(datasets.holdout) == 0 and len(datasets.train) == 320
    assert train.train(train.parse_args(["--eval", str(out / "best.pt")]))["val"]["model"]["top1"] == max(top1)


def test_a_retrains_curves_show_its_loss_and_val_top1_only(tmp_path, monkeypatch):
    """curves.png's panels: a retrain's log (no identity probability, no sampler statistics) draws
    2, a super-transformer's 4."""
    import matplotlib.pyplot as plt
    panels, subplots = [], plt.subplots

    def counted(rows, cols, **kw):
        panels.append(cols)
        return subplots(rows, cols, **kw)
    monkeypatch.setattr(plt, "subplots", counted)
    line = {"epoch": 1, "loss": 2.0, "val": {"model": {"top1": 10.0}}, "identity_prob": None}
    stats = {"block_share": [1.0] * 6, "patch_share": {"4": 0.5, "8": 0.5}}
    for log, want in (([line], 2), ([{**line, "identity_prob": 0.5, "sampled": stats}], 4)):
        (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        record.plot_curves(str(tmp_path / "log.jsonl"), str(tmp_path / "curves.png"))
        assert panels[-1] == want and (tmp_path / "curves.png").exists()

@pytest.mark.slow
def test_k_micro_batches_give_the_weights_of_one_batch_k_times_larger(tmp_path, monkeypatch):
    """--accum-steps 2 at --batch-size 16 against --batch-size 32 (fp32 CPU, bilateral sharing and
    the sandwich's passes, one process): the same archs each step, the same gradient norm before
    clipping (the loss scaled by 1/K: unscaled, it doubles), the same weights to rounding."""
    norms, clip = {}, torch.nn.utils.clip_grad_norm_

    def recorded(params, max_norm, *a, **k):
        norms.setdefault(key, []).append(float(clip(params, max_norm, *a, **k)))
        return norms[key][-1]
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded)
    common = ["--epochs", "2", "--uniform-epochs", "1", *WINDOW, "--sandwich", "1", *SMALL, "--synthetic-size", "320"]
    for key, flags in (("one", ["--batch-size", "32"]), ("two", ["--batch-size", "16", "--accum-steps", "2"])):
        train_run(tmp_path / key, *common, *flags)
    a, b = (runs.load_checkpoint(tmp_path / key / "checkpoint.pt") for key in ("one", "two"))
    assert a["step"] == b["step"] == 18 and len(norms["one"]) == len(norms["two"]) == 18
    assert norms["two"] == pytest.approx(norms["one"], rel=1e-4)
    for k in a["model"]:   # a key's bias gets no gradient in exact arithmetic (softmax ignores a shift): there
        tol = 1e-4 if k.endswith("qk.2.bias") or k.endswith("qk.4.bias") else 1e-5   # Adam makes rounding a step
        assert torch.allclose(a["model"][k], b["model"][k], rtol=1e-4, atol=tol), k
    logs = [[json.loads(line)["sampled"] for line in (tmp_path / key / "log.jsonl").read_text().splitlines()]
            for key in ("one", "two")]
    assert logs[0] == logs[1]                                    # the same archs drawn, step by step


@pytest.mark.slow
def test_accumulation_all_reduces_the_gradients_once_an_optimizer_step(ddp_runs):
    """Under 2-process torchrun, --accum-steps 2 at batch 16 all-reduces as many gradient buckets as
    batch 32 without accumulation (the first micro-batch under no_sync), on the same archs."""
    (_, ranks), (_, accum) = ddp_runs["ddp"], ddp_runs["accum"]
    assert ranks[0]["allreduces"] > 0
    assert [r["allreduces"] for r in accum] == [r["allreduces"] for r in ranks]
    assert accum[0]["archs"] == ranks[0]["archs"]

@pytest.mark.slow
def test_the_progress_line_says_how_much_of_the_epoch_waited_for_data(tmp_path, monkeypatch, capsys):
    """A loader slowed by 0.3 s a batch shows as most of the epoch's time waiting for data; the
    same run with the loader as it is, as less. log.jsonl's seconds say as much: the wait as data
    (no more than the epoch), the steps and evaluation the rest; one process all-reduces nothing."""
    loader = data.epoch_loader

    def waited(line):
        return int(re.search(r"(\d+)% waiting for data", line).group(1))

    shares = {}
    for delay in (0.0, 0.3):
        def slowed(*a, **k):
            for batch in loader(*a, **k):
                time.sleep(delay)
                yield batch
        monkeypatch.setattr(data, "epoch_loader", slowed)
        t = time.time()
        r = train_run(tmp_path / str(delay), "--epochs", "1", *SMALL, "--synthetic-size", "200")
        wall, sec = time.time() - t, r["seconds"]
        shares[delay] = waited([line for line in capsys.readouterr().out.splitlines() if "waiting" in line][-1])
        assert delay * r["step"] <= sec["data"] < delay * r["step"] + 0.5 and sec["steps"] > 0 < sec["evaluation"]
        assert sec["data"] + sec["steps"] + sec["evaluation"] <= wall and sec["all_reduce"] == 0
    assert shares[0.3] >= 60 and shares[0.0] < shares[0.3]


# -----------------------------------------------------------------------------
# (6) run folders (issue 33) and checkpoints: one live run each, logs consistent with the checkpoint,
# crashes, restarts, failing writes, unreadable or unsafe checkpoints

RUN = ["--epochs", "2", "--uniform-epochs", "1", *WINDOW, *SMALL, "--synthetic-size", "320"]


def files_of(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def holder(folder, seconds):
    """Another process holding `folder` as a run does (runs.run_folder), ready when it prints."""
    code = (f"import sys, time, runs; sys.stdout.reconfigure(line_buffering=True)\n"
            f"with runs.run_folder({str(folder)!r}, runs.Dist()):\n    print('held'); time.sleep({seconds})")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.slow
def test_a_second_run_into_a_live_runs_folder_is_refused_and_a_dead_runs_lock_taken(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(out, *RUN, "--epochs", "1")
    p = holder(out, 60)                                  # a live run in another process
    before = files_of(out)
    try:
        for module, argv in ((train, ["--out", str(out), *RUN]),
                             (search, ["--ckpt", str(out / "checkpoint.pt"), "--out", str(out), *WINDOW])):
            code, err = run_main(module, argv, capsys)
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert str(out) in err and f"pid {p.pid} on host {socket.gethostname()}" in err, err
        assert files_of(out) == before                   # nothing written, the holder's lock file included
    finally:
        p.kill()
        p.wait()
    # the holder died (kill -9) and left its lock file: the next run takes it without a question
    assert json.loads((out / ".lock").read_text())["pid"] == p.pid
    assert train_run(out, *RUN, "--epochs", "1")["epoch"] == 1
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    with runs.run_folder(str(out), runs.Dist()):       # in this very process, too
        with pytest.raises(cli.UserError, match="in use by another run"):
            with runs.run_folder(str(out), runs.Dist()):
                pass


@pytest.mark.slow
def test_a_torchrun_run_into_a_live_runs_folder_is_refused_on_every_rank(ddp_runs):
    """2 processes of train.py into a folder another process holds (the first run of ddp_runs'
    launch): every rank ends with exit code 2 (train.main's SystemExit) and one line naming the
    holder on its stderr, no traceback, and nothing is written into the folder."""
    _, refused = ddp_runs["refused"]
    assert refused["after"] == refused["before"]              # nothing written, the holder's lock file included
    for code, err in refused["said"]:
        assert code == "2", err                                 # ended, and how
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert ("in use by another run" in lines[0]
                and f"pid {refused['holder']} on host {socket.gethostname()}" in lines[0])


@pytest.mark.slow
def test_a_crash_between_the_log_and_the_checkpoint_logs_each_epoch_once(tmp_path, monkeypatch):
    """Killed after epoch 2's line is appended and before its checkpoint is written: the rerun trains
    epoch 2 again and the log holds epochs 1 and 2 once each, as an uninterrupted run's; a torn
    last line goes too. A fresh run into the folder (checkpoint deleted) starts its own log."""
    save = runs.Run.save

    def die_at_epoch_2(run):
        if run.step == 2 * run.steps_per_epoch:
            with open(tmp_path / "log.jsonl", "a") as f:
                f.write('{"epoch": 3, "tor')             # and a torn line, as a kill mid-append leaves
            raise KeyboardInterrupt
        save(run)
    monkeypatch.setattr(runs.Run, "save", die_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path, *RUN)
    monkeypatch.undo()

    def epochs():
        return [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert runs.load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    train_run(tmp_path, *RUN)
    assert epochs() == [1, 2]
    old = (tmp_path / "log.jsonl").read_text()
    (tmp_path / "checkpoint.pt").unlink()
    train_run(tmp_path, *RUN, "--epochs", "1")
    assert epochs() == [1]
    aside = list(tmp_path.glob("log.before-*.jsonl"))
    assert len(aside) == 1 and aside[0].read_text() == old


@pytest.mark.slow
def test_a_crash_after_a_mid_epoch_checkpoint_logs_each_epoch_once_and_ends_as_an_uninterrupted_run(
        tmp_path, monkeypatch):
    """--save-every 3 (4 steps an epoch: checkpoints at steps 3, 4, 6, 8), killed after epoch 2's line
    is appended and before its checkpoint, so the last checkpoint is step 6's, mid-epoch 2; log.jsonl
    then holds epoch 1's line twice (after epoch 2's) and a torn last line. The rerun trains steps 7
    and 8 again: log.jsonl holds epochs 1 and 2 once each, in order, with an uninterrupted run's
    figures, and the final weights are its weights (drop path and MixUp draw every step)."""
    argv = [*RUN, "--batch-size", "64", "--eval-limit", "32", "--save-every", "3", "--drop-path", "0.1",
            "--mixup", "0.8"]
    monkeypatch.setattr(train.record, "plot_curves", lambda *a: None)          # no picture needed
    whole = tmp_path / "whole"
    train_run(whole, *argv)
    out = tmp_path / "crashed"
    save = runs.Run.save

    def die_after_epoch_2s_line(run):
        if run.step == 2 * run.steps_per_epoch:
            first = (out / "log.jsonl").read_text().splitlines()[0]
            with open(out / "log.jsonl", "a") as f:
                f.write(first + '\n{"epoch": 3, "tor')      # epoch 1's line again, and a torn line
            raise KeyboardInterrupt
        save(run)
    monkeypatch.setattr(runs.Run, "save", die_after_epoch_2s_line)
    with pytest.raises(KeyboardInterrupt):
        train_run(out, *argv)
    monkeypatch.setattr(runs.Run, "save", save)
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines[:-1]] == [1, 2, 1] and lines[-1] == '{"epoch": 3, "tor'
    assert runs.load_checkpoint(out / "checkpoint.pt")["step"] == 6
    train_run(out, *argv)

    def records(folder):     # every figure but the speed, which is the machine's
        return [{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "provenance", "seconds")}
                for line in (folder / "log.jsonl").read_text().splitlines()]
    got, want = records(out), records(whole)
    assert [r["epoch"] for r in got] == [1, 2] and got == want
    a, b = (runs.load_checkpoint(folder / "checkpoint.pt") for folder in (whole, out))
    assert a["step"] == b["step"] == 8 and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def worker_pids(agent):
    """The processes torchrun's agent (pid `agent`) started: its workers."""
    pids = []
    for t in os.listdir(f"/proc/{agent}/task"):
        with open(f"/proc/{agent}/task/{t}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def worker_of_rank(agent, rank):
    """The pid of the worker of torchrun's agent whose environment says RANK=`rank`."""
    for pid in worker_pids(agent):
        with open(f"/proc/{pid}/environ", "rb") as f:
            if f"RANK={rank}".encode() in f.read().split(b"\0"):
                return pid
    raise AssertionError(f"no worker of rank {rank} under torchrun's agent {agent}")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's workers in /proc")
def test_torchrun_restarts_a_killed_worker_into_the_uninterrupted_runs_weights(ddp_runs, tmp_path):
    """torchrun --max-restarts=1 with the agent's store not shared with the workers (the README's
    command: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1; shared, gloo's restarted workers connect to the
    dead ones' addresses): the worker of rank 1 killed with -9 after the first epoch; the restarted
    workers resume from the checkpoint and end with the weights of a run nobody killed (ddp_runs'
    RESTART_DDP), each epoch logged once. Drop path and MixUp draw from every rank's generator each step, so rank 1 ends
    there only if its own generator's state was restored too."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "train.py", "--out", str(tmp_path / "b"), *RESTART_DDP]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": HERE, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    killed = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ck, start = tmp_path / "b" / "checkpoint.pt", time.time()
    while not ck.exists() and time.time() - start < 120:        # the first epoch's
        time.sleep(0.02)
    os.kill(worker_of_rank(killed.pid, 1), signal.SIGKILL)
    out = killed.communicate(timeout=300)[0]
    assert killed.returncode == 0 and "resumed from" in out, out[-3000:]
    a, b = runs.load_checkpoint(ddp_runs["restart"][0] / "checkpoint.pt"), runs.load_checkpoint(ck)   # nobody killed a
    assert a["args"]["drop_path"] == 0.1 and a["args"]["mixup"] == 0.8
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    log = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


@pytest.mark.parametrize("error, words", [(OSError, "OSError: [Errno 28] No space left on device"),
                                          (RuntimeError, "RuntimeError: [enforce fail at inline_container.cc")],
                         ids=["OSError", "RuntimeError"])
def test_a_failing_checkpoint_write_keeps_the_previous_checkpoint_loadable(tmp_path, monkeypatch, capsys, error,
                                                                           words):
    """A full disk while the second checkpoint is written (--save-every 1: step 2's; torch.save writes
    part of it, then fails: an OSError, or torch's own RuntimeError, got here by saving into
    /dev/full): one line naming the file, the error and the fix, exit 2, no .tmp left, the first
    one (step 1's) loads."""
    if error is RuntimeError and not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    real_save, calls = torch.save, []

    def full_disk(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"\x80\x02partial")
            if error is RuntimeError:
                real_save(obj, "/dev/full")          # raises "[enforce fail at ...] unexpected pos ..."
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)
    monkeypatch.setattr(torch, "save", full_disk)
    code, err = run_main(train, ["--out", str(tmp_path), *RUN, "--save-every", "1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert str(tmp_path / "checkpoint.pt") in err
    assert "previous checkpoint is kept" in err and "rerun" in err
    assert not list(tmp_path.glob("*.tmp"))
    assert runs.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1


@pytest.mark.parametrize("content", [np.random.default_rng(256).bytes(256), b"PK\x03\x04 not a zip", b""],
                         ids=["random", "zip", "empty"])
def test_an_unreadable_checkpoint_is_one_line_without_unsafe_advice(tmp_path, capsys, content):
    (tmp_path / "x.pt").write_bytes(content)
    code, err = run_main(train, ["--eval", str(tmp_path / "x.pt")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "not a readable vitas checkpoint" in err and "expected a checkpoint.pt" in err
    assert "weights_only" not in err and "succeed" not in err, err


class RunsCode:
    """Unpickling this runs exec(code): what a crafted checkpoint can do to a loader that trusts pickle."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(trained, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    ck = runs.load_checkpoint(trained)
    torch.save({**ck, "args": {**ck["args"], "payload": RunsCode(f"open({str(marker)!r}, 'w').write('ran')")}}, evil)
    (tmp_path / "arch.json").write_text(json.dumps(TINY.min_arch().to_dict()))
    for module, argv in [(train, ["--eval", str(evil)]),
                         (train, ["--arch", str(tmp_path / "arch.json"), "--init-from", str(evil),
                                  "--out", str(tmp_path / "r"), *SMALL]),
                         (search, ["--ckpt", str(evil), *WINDOW, "--out", str(tmp_path / "s"), "--device", "cpu"])]:
        code, err = run_main(module, argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(evil) in err and "refused" in err, err
        assert not marker.exists()                                    # nothing it holds ran
    # the same file written by the first format (numpy's RNG state pickled): a clear way out
    torch.save({**ck, "rng": [{"numpy": np.random.get_state()}]}, tmp_path / "old.pt")
    code, err = run_main(train, ["--eval", str(tmp_path / "old.pt")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "earlier vitas" in err and "retrain" in err, err


@pytest.mark.slow
def test_checkpoints_logs_and_results_carry_the_commit_that_wrote_them(tmp_path):
    """A run's checkpoint and every log.jsonl line hold this checkout's commit, whether its tree had
    uncommitted changes, the torch version and the date, as git itself reports them."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    changed = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                                  capture_output=True, text=True).stdout.strip())
    train_run(tmp_path, "--epochs", "1", *SMALL, "--synthetic-size", "320")
    ck = runs.load_checkpoint(tmp_path / "checkpoint.pt")
    logged = [json.loads(line)["provenance"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert ck["provenance"]["commit"] == head and len(head) == 40 and ck["provenance"]["torch"] == torch.__version__
    assert ck["provenance"]["uncommitted_changes"] == changed and logged == [ck["provenance"]]


@pytest.mark.slow
def test_provenance_outside_a_checkout_is_unknown(tmp_path):
    for name in ("runs.py", "cli.py", "vitas.py"):
        (tmp_path / name).write_text(open(os.path.join(HERE, name)).read())
    out = subprocess.run([sys.executable, "-c", "import json, runs; print(json.dumps(runs.provenance()))"],
                         cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "GIT_CEILING_DIRECTORIES":
                                                                            str(tmp_path.parent)})
    got = json.loads(out.stdout)
    assert got["commit"] == "unknown" and got["uncommitted_changes"] is None and got["torch"] == torch.__version__


# -----------------------------------------------------------------------------
# (7) search: genetic operators, evolution, Pareto front, search.py end to end, baselines, throughput budgets

# every attention width of both presets suits every head count; here a change of heads can break the pair
ODD = SearchSpace(image_size=32, in_chans=3, num_classes=10, patch_sizes=(4, 8), depth=4, embed_dims=(32, 48),
                  heads=(3, 4), attn_dims=(16, 24, 32), mlp_dims=(64, 128))


def distance(arch, target, space):
    """Genes apart, in steps along each sorted choice list; an identity mismatch costs 5."""
    def steps(choices, x, y):
        return abs(choices.index(x) - choices.index(y))

    d = (steps(space.patch_sizes, arch.patch_size, target.patch_size)
         + steps(space.embed_dims, arch.embed_dim, target.embed_dim))
    for x, y in zip(arch.blocks, target.blocks):
        if (x is None) != (y is None):
            d += 5
        elif x is not None:
            d += (steps(space.heads, x.heads, y.heads) + steps(space.attn_dims, x.attn_dim, y.attn_dim)
                  + steps(space.mlp_dims, x.mlp_dim, y.mlp_dim))
    return d


def run(evo, generations, target, space):
    """Drive a search with fitness = -distance to a hidden target."""
    for _ in range(generations):
        archs = evo.propose()
        evo.record(archs, [-distance(a, target, space) for a in archs])
    return evo


@pytest.mark.parametrize("space", [TINY, BIG, ODD], ids=["tiny", "vitas-1g", "odd"])
def test_operators_give_valid_archs(space):
    rng = np.random.default_rng(0)
    archs = [space.sample(rng, p) for p in (0.0, 0.5, 0.9) for _ in range(30)]
    for _ in range(600):
        a, b = (archs[i] for i in rng.choice(len(archs), 2, replace=False))
        space.validate(mutate(a, space, rng, rng.choice([0.1, 0.5, 1.0])))
        child = space.validate(crossover(a, b, space, rng))
        assert child.patch_size in (a.patch_size, b.patch_size) and child.embed_dim in (a.embed_dim, b.embed_dim)
        assert all(c in (x, y) for c, x, y in zip(child.blocks, a.blocks, b.blocks))   # whole block positions


def test_mutate_reaches_every_valid_heads_width_pair():
    rng = np.random.default_rng(1)
    arch = Arch(8, 32, (Block(3, 24, 64),) * ODD.depth)
    pairs = {(b.heads, b.attn_dim) for _ in range(300) for b in mutate(arch, ODD, rng, 0.5).blocks if b}
    assert pairs == {(3, 24), (4, 16), (4, 24), (4, 32)}


def test_mutate_probability():
    rng = np.random.default_rng(2)
    archs = [BIG.sample(rng) for _ in range(200)]
    assert all(mutate(a, BIG, rng, 0.0) == a for a in archs)
    assert sum(mutate(a, BIG, rng, 1.0) != a for a in archs) >= 0.9 * len(archs)
    # each gene is redrawn with the probability: an identity toggles (always a change) at rate q, and a
    # patch size redrawn uniformly changes at rate q (1 - 1/3); both counted over many mutations
    q = 0.05
    pairs = [(a, mutate(a, BIG, rng, q)) for a in archs * 20]
    toggled = np.mean([(x is None) != (y is None) for a, m in pairs for x, y in zip(a.blocks, m.blocks)])
    assert abs(toggled - q) < 0.005                                   # 64,000 positions: SE 0.0009
    patch = np.mean([a.patch_size != m.patch_size for a, m in pairs])
    assert abs(patch - q * 2 / 3) < 0.012                             # 4,000 mutations: SE 0.0028


def test_crossover_mixes_both_parents():
    rng = np.random.default_rng(3)
    a, b = BIG.max_arch(), BIG.min_arch()
    assert crossover(a, a, BIG, rng) == a
    share = np.mean([np.mean([c == y for c, y in zip(crossover(a, b, BIG, rng).blocks, b.blocks)]) for _ in range(200)])
    assert 0.45 < share < 0.55


def test_evolution_beats_random_search_with_the_same_evaluations():
    """A hidden target inside the window; both searches share generation 0 (same seed), so every
    difference comes from breeding versus sampling afresh."""
    lo, hi = 1.0e9, 1.5e9
    assert lo <= vitas.flops(VITAS_C, BIG) <= hi
    gains = []
    for seed in range(5):
        evo, rand = (run(Evolution(BIG, lo, hi, population=20, parents=5, algo=algo, seed=seed), 10, VITAS_C, BIG)
                     for algo in ("evolution", "random"))
        assert len(evo.history) == len(rand.history) == 200
        first = [r for r in evo.history if r["generation"] == 0]
        assert first == [r for r in rand.history if r["generation"] == 0]
        start = max(r["fitness"] for r in first)
        assert evo.best["fitness"] > start and rand.best["fitness"] >= start
        assert evo.best["fitness"] >= rand.best["fitness"]
        gains.append(evo.best["fitness"] - rand.best["fitness"])
    assert np.mean(gains) >= 10, gains


@pytest.mark.parametrize("algo", ["evolution", "random"])
def test_candidates_are_in_window_within_params_and_never_repeated(algo):
    rng = np.random.default_rng(4)
    sampled = [TINY.sample(rng) for _ in range(500)]
    lo, hi = np.quantile([vitas.flops(a, TINY) for a in sampled], [0.3, 0.7]).astype(int)
    params_max = int(np.median([vitas.params(a, TINY) for a in sampled]))
    target = TINY.sample(rng)
    evo = Evolution(TINY, lo, hi, params_max=params_max, population=16, parents=4, algo=algo, seed=1)
    run(evo, 8, target, TINY)
    archs = [Arch.from_dict(r["arch"]) for r in evo.history]
    assert len(set(archs)) == len(archs) == 8 * 16
    assert [r["generation"] for r in evo.history] == [g for g in range(8) for _ in range(16)]
    for arch, r in zip(archs, evo.history):
        assert r["flops"] == vitas.flops(arch, TINY) and r["params"] == vitas.params(arch, TINY)
        assert lo <= r["flops"] <= hi and r["params"] <= params_max
    with pytest.raises(ValueError, match="evaluated twice"):
        evo.record(archs[:1], [0.0])


def test_converged_population_still_fills_a_generation():
    """mutate_prob=0 breeds only repeats of parents and their crosses; fresh samples make up the rest."""
    evo = run(Evolution(TINY, 0, 10**9, population=12, parents=2, mutate_prob=0.0, seed=0), 5, TINY.max_arch(), TINY)
    assert len({json.dumps(r["arch"]) for r in evo.history}) == 60


def test_same_seed_same_run():
    a, b, c = (run(Evolution(TINY, 0, 10**9, population=10, parents=3, seed=s), 4, TINY.max_arch(), TINY)
               for s in (7, 7, 8))
    assert a.history == b.history and a.history != c.history


def test_best_is_the_earliest_among_ties():
    evo = Evolution(TINY, 0, 10**9, population=4, parents=2)
    assert evo.best is None
    archs = evo.propose()
    evo.record(archs, [0.5, 0.9, 0.9, 0.1])
    assert evo.best["arch"] == archs[1].to_dict()


@pytest.mark.parametrize("space", [TINY, BIG], ids=["tiny", "vitas-1g"])
def test_impossible_windows_raise_at_construction(space):
    lo = vitas.flops(Arch(space.patch_sizes[-1], space.embed_dims[0], (None,) * space.depth), space)
    hi = vitas.flops(space.max_arch(), space)
    for flops_min, flops_max, words in ((hi + 1, hi + 10, "unreachable"), (0, lo - 1, "unreachable"),
                                        (hi, lo, "empty")):
        with pytest.raises(ValueError, match=words):
            Evolution(space, flops_min, flops_max)
    with pytest.raises(ValueError, match="params_max"):
        Evolution(space, lo, hi, params_max=10)


def test_too_narrow_window_is_a_clear_error_not_a_hang():
    x = vitas.flops(TINY.min_arch(), TINY)          # reachable, but almost never sampled exactly
    evo = Evolution(TINY, x, x, max_tries=2000)
    with pytest.raises(ValueError, match="too narrow"):
        evo.propose()


@pytest.mark.parametrize("algo", ["evolution", "random"])
def test_kill_and_resume_equals_an_uninterrupted_run(algo):
    settings = dict(population=12, parents=4, algo=algo, seed=3)
    target = TINY.sample(np.random.default_rng(5), 0.3)
    whole = run(Evolution(TINY, "2M", "6M", **settings), 7, target, TINY)
    first = run(Evolution(TINY, "2M", "6M", **settings), 3, target, TINY)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = Evolution(TINY, 2_000_000, 6_000_000, **settings)
    resumed.load_state_dict(state)
    run(resumed, 4, target, TINY)
    assert resumed.history == whole.history and resumed.best == whole.best and resumed.generation == 7
    assert resumed.state_dict() == whole.state_dict()


@pytest.mark.parametrize("change", [dict(flops_max="7M"), dict(algo="random"), dict(seed=4), dict(population=10),
                                    dict(parents=3), dict(mutate_prob=0.2), dict(identity_prob=0.1),
                                    dict(params_max=10**6)])
def test_resume_with_other_settings_is_refused(change):
    settings = dict(population=12, parents=4, seed=3)
    state = run(Evolution(TINY, "2M", "6M", **settings), 2, TINY.max_arch(), TINY).state_dict()
    other = {**settings, **change}
    evo = Evolution(TINY, "2M", other.pop("flops_max", "6M"), **other)
    with pytest.raises(ValueError, match=next(iter(change))):
        evo.load_state_dict(state)


def dominated(r, records):
    return any(o["flops"] <= r["flops"] and o["fitness"] >= r["fitness"]
               and (o["flops"] < r["flops"] or o["fitness"] > r["fitness"]) for o in records)


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(6)
    for n in [0, 1, 2, 5, 30, 200]:
        for _ in range(20):
            # few distinct values, so ties in FLOPs, in fitness and in both occur
            records = [{"flops": int(f), "fitness": float(a), "id": i}
                       for i, (f, a) in enumerate(zip(rng.integers(0, 12, n), rng.integers(0, 8, n) / 8))]
            front = pareto_front(records)
            assert sorted(r["id"] for r in front) == [r["id"] for r in records if not dominated(r, records)]
            assert [r["flops"] for r in front] == sorted(r["flops"] for r in front)


@pytest.mark.slow
def test_short_super_transformer_run_is_well_above_chance_on_the_holdout(trained):
    net, space, loader = holdout_loader(trained)
    chance = 100 / space.num_classes
    for arch in record.reported_archs(space).values():
        for side in vitas.SIDES:
            res = data.evaluate(net, loader, runs.Dist(), arch, side)
            assert res["n"] == 200 and res["top1"] >= 2 * chance, (str(arch), side, res)
    untrained = data.evaluate(vitas.SuperTransformer(space), loader, runs.Dist(), space.max_arch(), "left")
    assert untrained["top1"] < 1.5 * chance


@pytest.mark.slow
def test_search_outputs_and_best_arch_retrain(trained, tmp_path, capsys):
    out = tmp_path / "s"
    summary = search.search(search.get_parser().parse_args(search_argv(trained, out, "--seed", "3")))
    cands = [json.loads(line) for line in open(out / "candidates.jsonl")]
    assert len(cands) == 18 and sorted({c["generation"] for c in cands}) == [0, 1, 2]
    archs = [Arch.from_dict(c["arch"]) for c in cands]
    assert len(set(archs)) == 18
    assert all(a == vitas.shift_identities(a) for a in archs)     # the checkpoint (v2) searches shifted networks
    for c, a in zip(cands, archs):
        assert LO <= c["flops"] == vitas.flops(a, TINY) <= HI and c["params"] == vitas.params(a, TINY)
    # fitness is the mean of left and right held-out top-1, recomputed independently here
    net, space, loader = holdout_loader(trained, limit=99)
    for c, a in list(zip(cands, archs))[:3]:
        expect = np.mean([data.evaluate(net, loader, runs.Dist(), a, s)["top1"] for s in vitas.SIDES])
        assert c["fitness"] == pytest.approx(expect)
    best = max(cands, key=lambda c: c["fitness"])
    assert json.load(open(out / "best_arch.json")) == {**best["arch"], "space": TINY.to_dict()}
    assert best["arch"] == summary["best"]["arch"]
    front = json.load(open(out / "pareto.json"))
    assert max(r["fitness"] for r in front) == best["fitness"]    # best, or an arch as fit with fewer FLOPs
    # exactly the candidates no other beats (as fit at fewer FLOPs counts as beating): complete, nothing dominated
    assert sorted(map(json.dumps, front)) == sorted(json.dumps(c) for c in cands if not dominated(c, cands))
    record = json.load(open(out / "search.json"))
    assert record["settings"]["seed"] == 3 and record["checkpoint"].endswith("checkpoint.pt")
    code, err = run_main(train, ["--arch", str(out / "best_arch.json"), "--out", str(tmp_path / "r"),
                                 "--epochs", "1", *SMALL], capsys)
    assert code == 0, err
    assert runs.load_checkpoint(tmp_path / "r" / "checkpoint.pt")["arch"] == best["arch"]


@pytest.mark.slow
def test_killed_and_resumed_search_equals_uninterrupted(trained, tmp_path, monkeypatch):
    search.search(search.get_parser().parse_args(search_argv(trained, tmp_path / "a")))
    real = Evolution.propose

    def killed_in_generation_1(evo):
        if evo.generation == 1:
            raise KeyboardInterrupt
        return real(evo)

    monkeypatch.setattr(Evolution, "propose", killed_in_generation_1)
    with pytest.raises(KeyboardInterrupt):
        search.search(search.get_parser().parse_args(search_argv(trained, tmp_path / "b")))
    monkeypatch.setattr(Evolution, "propose", real)
    assert len(open(tmp_path / "b" / "candidates.jsonl").readlines()) == 6
    search.search(search.get_parser().parse_args(search_argv(trained, tmp_path / "b")))
    for name in ("candidates.jsonl", "best_arch.json", "pareto.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name


@pytest.mark.slow
def test_a_search_resumed_without_holdout_extra_keeps_the_images_it_scored_on(trained, tmp_path, capsys):
    """Re-running a search without --holdout-extra resumes on the images its state.json names (0
    where the state predates the flag), not on the default's; another value given is refused."""
    out = tmp_path / "s"
    search.search(search.parse_args(search_argv(trained, out, "--holdout-extra", "0", "--generations", "1")))
    state = json.load(open(out / "state.json"))
    del state["holdout_extra"]                                      # as a search wrote it before the flag
    runs.write_json(str(out / "state.json"), state)
    summary = search.search(search.parse_args(search_argv(trained, out, "--generations", "2")))
    assert summary["settings"]["holdout_extra"] == 0 == json.load(open(out / "state.json"))["holdout_extra"]
    assert len(open(out / "candidates.jsonl").readlines()) == 2 * 6             # resumed: one generation more
    code, err = run_main(search, search_argv(trained, out, "--generations", "3", "--holdout-extra", "5"), capsys)
    assert code == 2 and "searched with --holdout-extra 0, this run has 5" in err and "Traceback" not in err


@pytest.mark.slow
def test_search_and_its_rank_check_under_torchrun_and_two_nodes_equal_one_process(trained, ddp_runs, two_nodes,
                                                                                   tmp_path):
    """search.py under one torchrun agent of 2 processes (with a rank check) and under two agents of
    one (two nodes) evaluates the candidates one process does; the rank check scores and trains the
    archs one process does."""
    folders = {"ddp": ddp_runs["search"][0], "nodes": two_nodes["search"][0], "one": tmp_path / "one"}
    single = search.search(search.parse_args([*ddp_search_argv(trained), "--out", str(folders["one"]), *RANKED]))
    one = [json.loads(line) for line in open(folders["one"] / "candidates.jsonl")]
    for folder in ("ddp", "nodes"):
        ddp = [json.loads(line) for line in open(folders[folder] / "candidates.jsonl")]
        # counts all-reduce exactly; the held-out loss is a float sum whose order depends on the sharding
        assert [{**r, "loss": None, "prob": None} for r in ddp] == [{**r, "loss": None, "prob": None} for r in one]
        for sum_of_floats in ("loss", "prob"):      # summed in another order
            assert [r[sum_of_floats] for r in ddp] == pytest.approx([r[sum_of_floats] for r in one], rel=1e-5)
    assert single["best"] in one
    ddp, one = (json.load(open(folders[x] / "rank_check.json")) for x in ("ddp", "one"))
    assert [a["arch"] for a in ddp["archs"]] == [a["arch"] for a in one["archs"]]
    assert [a["fitness"] for a in ddp["archs"]] == [a["fitness"] for a in one["archs"]]
    # per-process batch halved: same effective batch
    assert ddp["settings"]["retrain_argv"] != one["settings"]["retrain_argv"]
    for a, b in zip(ddp["archs"], one["archs"]):        # the same training up to float summation order
        assert abs(a["top1"] - b["top1"]) <= 1.0, (a, b)


@pytest.mark.slow
def test_search_rejects_an_impossible_window_at_once(trained, tmp_path, capsys):
    code, err = run_main(search, ["--ckpt", str(trained), "--flops-min", "1G", "--flops-max", "2G",
                                  "--out", str(tmp_path)], capsys)
    assert code == 2 and "unreachable" in err and "Traceback" not in err
    code, err = run_main(search, ["--ckpt", str(tmp_path / "none.pt"), *WINDOW, "--out", str(tmp_path)], capsys)
    assert code == 2 and "does not exist" in err


def test_hand_designed_baseline_is_the_uniform_arch_nearest_in_flops():
    lo, hi, target = LO, HI, 3_000_000
    base = rankcheck.baseline_arch(TINY, target, lo, hi)
    uniform = [a for p, c, h, w, m in itertools.product(TINY.patch_sizes, TINY.embed_dims, TINY.heads,
                                                        TINY.attn_dims, TINY.mlp_dims)
               if lo <= vitas.flops(a := Arch(p, c, (Block(h, w, m),) * TINY.depth), TINY) <= hi]
    assert len(uniform) >= 5
    assert len(set(base.blocks)) == 1 and base.depth == TINY.depth and lo <= vitas.flops(base, TINY) <= hi
    assert all(abs(vitas.flops(base, TINY) - target) <= abs(vitas.flops(a, TINY) - target) for a in uniform)
    assert rankcheck.baseline_arch(TINY, target, 10**12, 2 * 10**12) is None


def test_deit_baseline_has_deit_proportions_and_the_nearest_flops():
    """deit_arch against every uniform arch of the space that has DeiT's proportions (attention width
    nearest the embed dim, MLP nearest 4x, head dim nearest 64, the first blocks present)."""
    def nearest(choices, x):
        return min(abs(v - x) for v in choices)

    def deit_like(a):
        b = a.blocks[0]
        heads = [h for h in TINY.heads if b.attn_dim % h == 0]
        return (abs(b.attn_dim - a.embed_dim) == nearest(TINY.attn_dims, a.embed_dim)
                and abs(b.mlp_dim - 4 * a.embed_dim) == nearest(TINY.mlp_dims, 4 * a.embed_dim)
                and abs(b.attn_dim / b.heads - 64) == min(abs(b.attn_dim / h - 64) for h in heads))

    for lo, hi, target in [(LO, HI, 3_000_000), (LO, HI, 2_100_000),
                           (500_000, 8_000_000, 7_000_000)]:
        got = rankcheck.deit_arch(TINY, target, lo, hi)
        family = [a for a in TINY.uniform_archs() if deit_like(a) and lo <= vitas.flops(a, TINY) <= hi]
        assert got in family and len(family) >= 3
        gap = abs(vitas.flops(got, TINY) - target)
        assert gap == min(abs(vitas.flops(a, TINY) - target) for a in family)
        # ties: the deeper
        assert got.depth == max(a.depth for a in family if abs(vitas.flops(a, TINY) - target) == gap)
    assert rankcheck.deit_arch(TINY, 3e12, 10**12, 2 * 10**12) is None


def png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), len(data)


@pytest.mark.slow
def test_train_draws_curves_and_search_draws_the_pareto_front(trained, tmp_path):
    w, h, size = png_size(trained.parent / "curves.png")
    assert w >= 800 and h >= 300 and 10_000 < size < 2_000_000
    out = tmp_path / "s"
    summary = search.search(search.parse_args(search_argv(trained, out, "--compare", "--retrain-epochs", "1")))
    w, h, size = png_size(out / "pareto.png")
    assert w >= 600 and h >= 400 and 10_000 < size < 2_000_000
    # search.json: each algorithm's best is the best of its own candidates (same number evaluated) ...
    record = json.load(open(out / "search.json"))
    assert record == json.loads(json.dumps(summary)) and set(record["compare"]) == {"evolution", "random"}
    for algo, folder in (("evolution", out), ("random", out / "random")):
        cands = [json.loads(line) for line in open(folder / "candidates.jsonl")]
        assert len(cands) == 18 and record["compare"][algo] == max(cands, key=lambda c: c["fitness"])
    # ... and the retrained trio: the searched arch and both hand-designed designs at its FLOPs, as trained alone
    best = record["best"]
    expect = {"searched": best["arch"],
              "uniform": rankcheck.baseline_arch(TINY, best["flops"], LO, HI).to_dict(),
              "deit": rankcheck.deit_arch(TINY, best["flops"], LO, HI).to_dict()}
    assert {k: v["arch"] for k, v in record["retrain"].items()} == expect
    for name, r in record["retrain"].items():
        alone = [json.load(open(f)) for f in (out / "retrain").glob("*/result.json")
                 if json.load(open(f))["arch"] == r["arch"]]
        assert len(alone) == 1 and alone[0]["val"]["top1"] == r["top1"] and 0 <= r["top1"] <= 100, name
        assert r["flops"] == vitas.flops(Arch.from_dict(r["arch"]), TINY) and LO <= r["flops"] <= HI


def test_throughput_is_measured_positive_and_a_much_larger_arch_is_slower():
    small = Arch(8, 32, (Block(2, 32, 64),) + (None,) * 5)
    big = TINY.max_arch()                                      # ~20x the MACs, 4x the tokens
    fast, slow = (record.measure_throughput(a, TINY, batch=16, max_seconds=0.5) for a in (small, big))
    assert 0 < slow < fast < float("inf") and fast > 3 * slow


def test_latency_model_features_carry_every_flops_term_and_its_fit_recovers_a_known_cost():
    """With weight one on the block MACs and the rest, the model is the FLOPs counter (itself checked
    against torch's FLOP counter), arch by arch; and least squares recovers a cost built from known
    coefficients."""
    for space in (TINY, BIG):
        model = record.LatencyModel(space, [0, 0, 0, 0, 1, 0, 1])
        for arch in random_archs(space, 60, seed=5):
            assert model(arch) == vitas.flops(arch, space)
    coef = np.array([2e-5, 1e-7, 3e-6, 2e-8, 4e-12, 5e-10, 1e-12])
    archs = random_archs(TINY, 80, seed=6)
    truth = record.LatencyModel(TINY, coef)
    fitted = record.LatencyModel(TINY).fit(archs, [1 / truth(a) for a in archs])
    assert all(fitted(a) == pytest.approx(truth(a), rel=1e-6) for a in random_archs(TINY, 20, seed=7))


def test_throughput_meter_measures_each_arch_once(monkeypatch):
    calls = []
    monkeypatch.setattr(record, "measure_throughput",
                        lambda arch, *a, **k: calls.append(arch) or 1000.0 + len(calls))
    meter = record.ThroughputMeter(TINY, batch=8)
    archs = random_archs(TINY, 6)
    first = [meter(a) for a in archs + archs[:3]]
    assert len(calls) == meter.measured == 6 and first[6:] == first[:3]
    other = record.ThroughputMeter(TINY, batch=16)              # another batch is another measurement
    other.load_state_dict(meter.state_dict())
    assert other(archs[0]) and len(calls) == 7
    again = record.ThroughputMeter(TINY, batch=8)
    again.load_state_dict(meter.state_dict())
    assert [again(a) for a in archs] == first[:6] and len(calls) == 7


@pytest.mark.slow
def test_search_candidates_meet_the_throughput_budget(trained, tmp_path, capsys):
    out = tmp_path / "s"
    summary = search.search(search.parse_args(search_argv(trained, out, "--throughput-min", "1",
                                                          "--throughput-batch", "8")))
    cands = [json.loads(line) for line in open(out / "candidates.jsonl")]
    speeds = sorted(c["throughput"] for c in cands)
    limit = speeds[len(speeds) // 2]                           # a budget half of them met
    out2 = tmp_path / "s2"
    search.search(search.parse_args(search_argv(trained, out2, "--throughput-min", str(limit),
                                                "--throughput-batch", "8")))
    cands = [json.loads(line) for line in open(out2 / "candidates.jsonl")]
    assert len(cands) == 18 and all(c["throughput"] >= limit for c in cands)
    front = json.load(open(out2 / "pareto_throughput.json"))
    assert front and all(not any(o["throughput"] >= r["throughput"] and o["fitness"] > r["fitness"] for o in cands)
                         for r in front)
    assert summary["throughput"]["batch"] == 8 and summary["throughput"]["dtype"] == "float32"
    code, err = run_main(search, search_argv(trained, tmp_path / "s3", "--throughput-min", "1e9"), capsys)
    assert code == 2 and "out of reach" in err and "fastest" in err and "slowest" in err


def fake_images_per_s(arch, space, *a, **k):
    """A device whose speed is a known function of the arch (launch overhead per block plus MACs):
    the throughput tests then test the mechanism, not this machine's timing noise (bench.py
    measures how well the latency model predicts real devices)."""
    return 1.0 / (2e-5 + 4e-6 * arch.depth + 3e-12 * vitas.flops(arch, space))


@pytest.mark.slow
def test_training_aims_sampling_at_a_throughput_window_and_a_resume_does_not_measure_again(tmp_path, monkeypatch,
                                                                                           capsys):
    monkeypatch.setattr(record, "measure_throughput", fake_images_per_s)
    g = np.random.default_rng(9)
    probe = [fake_images_per_s(TINY.sample(g), TINY) for _ in range(200)]
    lo, hi = np.quantile(probe, [0.1, 0.35])                     # a window of slower-than-typical archs
    argv = ["--throughput-min", f"{lo:.0f}", "--throughput-max", f"{hi:.0f}", "--calibration-seconds", "5",
            "--uniform-epochs", "0", "--epochs", "1", "--save-every", "5", *SMALL]
    step = train.optimizer_step

    def crash_at_6(run, *a):
        if run.step == 5:
            raise KeyboardInterrupt
        return step(run, *a)
    monkeypatch.setattr(train, "optimizer_step", crash_at_6)
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path, *argv)
    ck = runs.load_checkpoint(tmp_path / "checkpoint.pt")
    cal = ck["throughput_calibration"]
    assert ck["step"] == 5 and cal["measured"] >= 12 and cal["batch"] == 16 and cal["inside"] >= 0.8
    # independently: archs drawn as training draws them, measured afresh
    sampler = train.ArchSampler(TINY, 0, 0, (1 / hi, 1 / lo), cost=record.LatencyModel(TINY, cal["coef"]))
    rng = np.random.default_rng(11)
    inside = np.mean([lo <= fake_images_per_s(sampler.draw(rng, learned=True), TINY) <= hi for _ in range(200)])
    assert inside >= 0.9, inside
    raw = np.mean([lo <= fake_images_per_s(TINY.sample(rng), TINY) <= hi for _ in range(200)])
    assert raw < 0.8 * inside                                    # the window is one that needs aiming at
    calls = []
    monkeypatch.setattr(record, "measure_throughput", lambda *a, **k: calls.append(1) or 1.0)
    monkeypatch.setattr(train, "optimizer_step", step)
    train_run(tmp_path, *argv)                                  # resumed, run to the end
    assert calls == [] and runs.load_checkpoint(tmp_path / "checkpoint.pt")["throughput_calibration"] == cal
    code, err = run_main(train, ["--out", str(tmp_path / "x"), "--throughput-min", "1e12",
                                 "--calibration-seconds", "1", *SMALL], capsys)
    assert code == 2 and "out of reach" in err and "fastest" in err and "slowest" in err


# -----------------------------------------------------------------------------
# (8) rank statistics and the rank check: does the super-transformer rank archs as training them alone does?

def brute_rho(x, y):
    """Spearman rho: Pearson correlation of ranks, a tie group taking the mean of its positions."""
    def ranks(v):
        return [1 + sum(w < a for w in v) + (sum(w == a for w in v) - 1) / 2 for a in v]
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


@pytest.mark.parametrize("seed", range(6))
def test_kendall_tau_b_and_spearman_rho_match_brute_force_with_ties(seed):
    g = np.random.default_rng(seed)
    n = int(g.integers(3, 15))
    x = g.integers(0, 4, n).tolist()                       # few values: many ties
    y = (np.array(x) * g.integers(-1, 2) + g.integers(0, 3, n)).tolist()
    if len(set(x)) == 1 or len(set(y)) == 1:
        return
    assert rankcheck.kendall_tau(x, y) == pytest.approx(brute_tau_b(x, y))
    assert rankcheck.spearman_rho(x, y) == pytest.approx(brute_rho(x, y))


def test_rank_statistics_edge_cases():
    assert rankcheck.kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert rankcheck.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert rankcheck.spearman_rho([1, 2, 2, 3], [1, 3, 3, 4]) == pytest.approx(1.0)   # ties on both sides, same order
    assert rankcheck.kendall_tau([1, 1, 1], [1, 2, 3]) is None and rankcheck.spearman_rho([1, 2], [5, 5]) is None
    with pytest.raises(ValueError):
        rankcheck.kendall_tau([1, 2], [1, 2, 3])


def test_bootstrap_rows_at_once_equal_one_resample_at_a_time():
    """kendall_taus takes every row at once (in chunks): each row's tau-b is the brute-force one
    over the entries known in both rows (NaN: lacking, with missing=True). The bootstrap built on
    it gives what one resample at a time gives: seed agreement (brute force) and reliability with
    archs of unequal seed counts, scores on each resample's own reference, and the paired
    difference, also where a fitness ties all the archs of some resamples (no tau there)."""
    g = np.random.default_rng(0)
    x, y = g.integers(0, 4, (9, 7)).astype(float), g.integers(0, 4, (9, 7)).astype(float)   # ties
    x[2, 3] = y[5, 0] = y[5, 6] = np.nan
    y[8] = x[8] = [1, 2, np.nan, np.nan, np.nan, np.nan, np.nan]                             # one pair left
    y[7] = 3.0                                                                                # constant: undefined
    for chunk in (1, 50, 10 ** 6):                            # rows one by one, two at a time (one left), all
        got = rankcheck.kendall_taus(x, y, missing=True, pairs_at_once=chunk)
        for row, (a, b) in enumerate(zip(x, y)):
            keep = ~(np.isnan(a) | np.isnan(b))
            assert (got[row] is None) == (row == 7)
            assert row == 7 or got[row] == pytest.approx(brute_tau_b(a[keep], b[keep]))
    assert np.isnan(rankcheck.kendall_taus(x[2:3], y[2:3])[0])   # unless asked, a NaN is a NaN, as it always was

    def brute_agreement(table):
        seeds = max(len(s) for s in table)
        return np.mean([brute_tau_b(*zip(*[(s[i], s[j]) for s in table if len(s) > j]))
                        for i in range(seeds) for j in range(i + 1, seeds)])

    top1 = [list(70 + g.normal(size=2 + (k > 0))) for k in range(12)]   # 3 seeds, one arch 2: resamples without it: 3
    fitness = g.normal(size=12)
    idx = rankcheck.resamples(12, count=50, seed=1)
    brute = [brute_agreement([top1[i] for i in rows]) for rows in idx]
    assert rankcheck.seed_agreement(top1, idx) == pytest.approx(brute)
    r_s = rankcheck.resampled_reliability(top1, idx)
    assert r_s == [rankcheck.reliability([top1[i] for i in rows])[2] for rows in idx]
    assert rankcheck.bootstrap(fitness, top1, idx, r_s) == [
        rankcheck.scores(fitness[rows], [top1[i] for i in rows], r) for rows, r in zip(idx, r_s)]
    mean = rankcheck.reference_mean(top1)
    tau = lambda f, rows: rankcheck.kendall_tau(f[rows], mean[rows])
    tied = np.r_[np.zeros(11), 1.0]                           # constant on every resample without the last arch
    for other in ([fitness + g.normal(size=12), fitness + g.normal(size=12)], [tied, fitness + g.normal(size=12)]):
        diff = rankcheck.paired_difference(fitness, other, top1, count=50, seed=1)
        one_at_a_time = [None if None in (t := [tau(o, rows) for o in other]) else tau(fitness, rows) - np.mean(t)
                         for rows in idx]
        assert diff["interval"] == rankcheck.percentile_interval(one_at_a_time, rankcheck.LEVEL)
        assert diff["difference"] == tau(fitness, np.arange(12)) - np.mean([tau(o, np.arange(12)) for o in other])
    assert None in one_at_a_time                              # the tied fitness left some resamples out


def test_reliability_oracle_bound_and_corrected_tau_on_hand_made_numbers():
    a, b, c = [1, 2, 3, 4, 5], [1, 2, 3, 5, 4], [5, 4, 3, 2, 1]             # three seeds' top-1 of five archs
    assert rankcheck.seed_agreement(list(zip(a, a))) == 1.0 and rankcheck.seed_agreement(list(zip(a, c))) == -1.0
    assert rankcheck.seed_agreement(list(zip(a, b))) == pytest.approx(0.8)           # one discordant pair of ten
    assert rankcheck.seed_agreement(list(zip(a, b, c))) == pytest.approx((0.8 - 1.0 - 0.8) / 3)   # mean over 3 pairs
    assert rankcheck.seed_agreement([[1], [2], [3]]) is None                        # one seed: nothing to compare
    # archs with a second seed only in part: the pair is scored on those that have both
    ragged = [[1, 1], [2], [3, 2], [4], [5, 3]]
    assert rankcheck.seed_agreement(ragged) == pytest.approx(1.0)
    assert (rankcheck.reliability(ragged)[:2] == (1.0, 1)
            and rankcheck.reference_mean(ragged).tolist() == [1, 2, 3, 4, 5])
    # r1 = sin(pi tau_ss / 2): tau_ss 1/3 -> r1 1/2; two seeds: 2 (1/2) / (1 + 1/2) = 2/3
    one_third = [[1, 1], [2, 3], [3, 2]]
    r1, seeds, r2 = rankcheck.reliability(one_third)
    assert r1 == pytest.approx(0.5) and seeds == 2 and r2 == pytest.approx(2 / 3)
    assert rankcheck.reliability([[1, 3], [2, 2], [3, 1]]) == (None, 2, None)        # seeds disagree: no correction
    assert rankcheck.spearman_brown(0.5, 1) == 0.5 and rankcheck.spearman_brown(0.5, 3) == pytest.approx(0.75)
    # asin(sqrt(1/2)) = pi/4
    assert rankcheck.oracle_tau(1.0) == 1.0 and rankcheck.oracle_tau(0.5) == pytest.approx(0.5)
    assert rankcheck.corrected_tau(0.3, 1.0) == pytest.approx(0.3)
    assert rankcheck.corrected_tau(0.5, 0.5) == pytest.approx(1.0)                   # sin(pi/4) / sqrt(1/2) = 1
    assert rankcheck.corrected_tau(0.6, 0.5) == 1.0 and rankcheck.corrected_tau(-0.6, 0.5) == -1.0   # clipped
    assert rankcheck.corrected_tau(rankcheck.oracle_tau(0.3), 0.3) == pytest.approx(1.0)   # the bound corrects to 1


@pytest.mark.slow
def test_oracle_bound_and_correction_hold_on_simulated_archs():
    """An independent check of the theory and the code: archs with a true accuracy z, each seed z plus
    noise of reliability 0.6. A fitness that knows z scores tau* against a 2-seed reference, and is
    corrected to about 1; a fitness of reliability 0.6 itself scores about tau* of r1 r2."""
    g = np.random.default_rng(0)
    n, r1 = 600, 0.6
    z = g.normal(size=n)
    noise = lambda: g.normal(scale=np.sqrt((1 - r1) / r1), size=n)
    by_seed = np.stack([z + noise(), z + noise()], 1).tolist()
    r = rankcheck.agreement(z, by_seed, count=20)          # the point figures: few resamples suffice
    r2 = 2 * r1 / (1 + r1)
    assert r["r1"] == pytest.approx(r1, abs=0.05) and r["reliability"] == pytest.approx(r2, abs=0.04)
    assert r["kendall_tau"] == pytest.approx(rankcheck.oracle_tau(r2), abs=0.04)
    assert r["tau_star"] == pytest.approx(r["kendall_tau"], abs=0.05) and r["tau_c"] > 0.93
    noisy = z + noise()
    assert rankcheck.agreement(noisy, by_seed, count=20)["tau_c"] == pytest.approx(rankcheck.oracle_tau(r1), abs=0.06)


@pytest.mark.slow
def test_bootstrap_intervals_are_the_papers_percentiles_of_2000_paired_resamples():
    """Brute force: the 5th and 95th percentiles of tau over 2,000 resamples of the archs (the same
    resamples for tau, tau_c, and both sides of a paired difference)."""
    g = np.random.default_rng(3)
    n = 14
    fitness = g.normal(size=n)
    by_seed = [[f + g.normal(), f + g.normal()] for f in fitness]
    other = fitness + g.normal(size=n)
    mean = [np.mean(s) for s in by_seed]
    idx = np.random.default_rng(0).integers(0, n, (2000, n))
    taus, diffs, corrected, means = [], [], [], []
    for rows in idx:
        t = brute_tau_b([fitness[i] for i in rows], [mean[i] for i in rows])
        seeds = [by_seed[i] for i in rows]
        ss = brute_tau_b([s[0] for s in seeds], [s[1] for s in seeds])
        taus.append(t)
        diffs.append(t - brute_tau_b([other[i] for i in rows], [mean[i] for i in rows]))
        means.append(np.mean([brute_tau_b([f[i] for i in rows], [mean[i] for i in rows]) for f in (fitness, other)]))
        r = 2 * np.sin(np.pi * ss / 2) / (1 + np.sin(np.pi * ss / 2))
        if ss > 0 and 2 / np.pi * np.arcsin(np.sqrt(r)) >= 0.3:        # a resampled reference that can rank
            corrected.append(2 / np.pi * np.arcsin(np.clip(np.sin(np.pi * t / 2) / np.sqrt(r), -1, 1)))
    r = rankcheck.agreement(fitness, by_seed)
    assert r["interval_level"] == 0.9 and r["resamples"] == 2000
    assert r["tau_interval"] == pytest.approx((np.percentile(taus, 5), np.percentile(taus, 95)))
    assert r["tau_c_interval"] == pytest.approx((np.percentile(corrected, 5), np.percentile(corrected, 95)))
    paired = rankcheck.paired_difference(fitness, other, by_seed)
    assert paired["difference"] == pytest.approx(brute_tau_b(fitness, mean) - brute_tau_b(other, mean))
    assert paired["interval"] == pytest.approx((np.percentile(diffs, 5), np.percentile(diffs, 95)))
    same = rankcheck.paired_difference(fitness, fitness, by_seed)
    assert same["difference"] == 0 and same["interval"] == (0, 0)
    # two supernet seeds against one: their mean tau, each resample the same archs for all three
    seeds = rankcheck.paired_difference([fitness, other], other, by_seed)
    assert seeds["difference"] == pytest.approx((brute_tau_b(fitness, mean) - brute_tau_b(other, mean)) / 2)
    mean_minus_other = [m - (t - d) for m, t, d in zip(means, taus, diffs)]    # tau(other) = t - d
    assert seeds["interval"] == pytest.approx((np.percentile(mean_minus_other, 5), np.percentile(mean_minus_other, 95)))


def test_top_regret_is_the_best_arch_lost_by_the_fitness_top_k():
    g = np.random.default_rng(5)
    for _ in range(20):
        n = int(g.integers(4, 12))
        by_seed, fitness = g.normal(size=(n, 2)).tolist(), g.normal(size=n)
        mean = np.mean(by_seed, 1)
        picked = sorted(range(n), key=lambda i: -fitness[i])[:3]
        assert rankcheck.top_regret(fitness, by_seed) == pytest.approx(mean.max() - max(mean[i] for i in picked))
    assert rankcheck.top_regret(mean, by_seed) == 0


def test_seed_difference_is_a_student_t_interval_over_seeds():
    """t quantiles against a printed table (Student 1908, as in every statistics text), the
    interval against its formula written out."""
    for df, t95 in ((1, 6.314), (2, 2.920), (3, 2.353), (4, 2.132), (9, 1.833)):
        assert rankcheck.t_quantile(0.95, df) == pytest.approx(t95, abs=1e-3)
    a, b = [0.58, 0.60, 0.58, 0.55], [0.29, 0.26, 0.57, 0.40]
    d = np.subtract(a, b)
    half = 2.353 * np.sqrt(np.sum((d - d.mean()) ** 2) / 3) / 2
    r = rankcheck.seed_difference(a, b)
    assert (r["difference"] == pytest.approx(d.mean())
            and r["interval"] == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-3))
    assert rankcheck.seed_difference(a, 0.5)["difference"] == pytest.approx(np.mean(a) - 0.5)
    assert rankcheck.seed_difference([0.3])["interval"] is None


def test_rank_statistics_score_floors_and_each_patch_size():
    archs = rankcheck.spread_archs(TINY, LO, HI, 16, seed=0)
    flops = [vitas.flops(a, TINY) for a in archs]
    by_seed = [[f / 1e5 + (i % 3), f / 1e5 - (i % 2)] for i, f in enumerate(flops)]
    r = rankcheck.rank_statistics([-f for f in flops], by_seed, archs, TINY)   # a fitness that ranks backwards
    assert r["floors"]["flops"]["kendall_tau"] == pytest.approx(brute_tau_b(flops, np.mean(by_seed, 1)))
    assert r["floors"]["depth"]["kendall_tau"] == pytest.approx(
        brute_tau_b([a.depth for a in archs], np.mean(by_seed, 1)))
    assert r["floors"]["params"]["kendall_tau"] == pytest.approx(
        brute_tau_b([vitas.params(a, TINY) for a in archs], np.mean(by_seed, 1)))
    assert r["kendall_tau"] == pytest.approx(-r["floors"]["flops"]["kendall_tau"])
    # worse than FLOPs alone, outside the noise
    assert r["floors"]["flops"]["fitness_minus_floor"]["interval"][1] < 0
    for p in ("4", "8"):
        rows = [i for i, a in enumerate(archs) if a.patch_size == int(p)]
        sub = r["by_patch"][p]
        tau = brute_tau_b([-flops[i] for i in rows], [np.mean(by_seed[i]) for i in rows])
        tau_ss = brute_tau_b([by_seed[i][0] for i in rows], [by_seed[i][1] for i in rows])  # this patch's seeds
        r1 = np.sin(np.pi * tau_ss / 2)
        r_s = 2 * r1 / (1 + r1)
        assert sub["archs"] == len(rows) and sub["kendall_tau"] == pytest.approx(tau)
        assert sub["seed_tau"] == pytest.approx(tau_ss) and sub["reliability"] == pytest.approx(r_s)
        assert sub["tau_star"] == pytest.approx(2 / np.pi * np.arcsin(np.sqrt(r_s)))
        assert sub["tau_c"] == pytest.approx(
            2 / np.pi * np.arcsin(np.clip(np.sin(np.pi * tau / 2) / np.sqrt(r_s), -1, 1)))


def cell_flops_range(space, patch, depth):
    """The fewest and the most FLOPs of a (patch, depth) cell, by brute force over its uniform archs
    (FLOPs grow with every width, so the narrowest and the widest blocks bound the cell)."""
    f = [vitas.flops(Arch(patch, c, (Block(h, a, m),) * depth + (None,) * (space.depth - depth)), space)
         for c in space.embed_dims for h in space.heads for a in space.attn_for[h] for m in space.mlp_dims]
    return min(f), max(f)


@pytest.mark.slow
def test_rank_check_archs_are_stratified_by_cell_in_the_window_and_drawn_without_a_fitness():
    lo, hi = LO, HI
    cells = rankcheck.stratified_archs(TINY, lo, hi, 6, seed=0)
    reachable = {(p, d) for p in TINY.patch_sizes for d in range(1, 7)
                 if cell_flops_range(TINY, p, d)[0] <= hi and cell_flops_range(TINY, p, d)[1] >= lo}
    assert set(cells) == reachable and len(reachable) == 8
    for (p, d), archs in cells.items():
        assert len(archs) == len(set(archs)) == 6
        for a in archs:
            assert (a.patch_size == p and a.depth == d and lo <= vitas.flops(a, TINY) <= hi
                    and a == vitas.shift_identities(a))
    picked = rankcheck.spread_archs(TINY, lo, hi, 10, seed=0)
    assert (picked[:8] == [archs[0] for archs in cells.values()]
            and picked[8:] == [archs[1] for archs in list(cells.values())[:2]])
    assert rankcheck.spread_archs(TINY, lo, hi, 10, seed=1) != picked            # the seed decides, nothing else
    assert rankcheck.stratified_archs(TINY, lo, hi, 3, seed=0) == {c: archs[:3] for c, archs in cells.items()}
    with pytest.raises(cli.UserError, match="lower --rank-check"):
        rankcheck.spread_archs(TINY, 3_990_000, 4_000_000, 500, seed=0)


RANK = ["--rank-check", "3", "--rank-epochs", "1", "--rank-seeds", "2", "--retrain-flags", "--smoothing 0.2"]


@pytest.mark.slow
def test_rank_check_after_a_search_and_resumed_without_redoing_trainings(tmp_path, monkeypatch):
    # a super-transformer of 800 images (not `trained`'s 2,000): the rank check trains its archs on them
    trained = tmp_path / "super" / "checkpoint.pt"
    train_run(trained.parent, "--epochs", "2", *WINDOW, "--synthetic-size", "800", "--batch-size", "32",
              "--eval-limit", "64", "--log-every", "1000", "--device", "cpu")
    out = tmp_path / "s"
    calls = []
    real = train.train

    def counted(args, fail_after=None):
        calls.append(args)
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt   # a kill in the middle of the third training (the second arch's first seed)
        return real(args)

    monkeypatch.setattr(train, "train", lambda a: counted(a, fail_after=2))
    with pytest.raises(KeyboardInterrupt):
        search.search(search.parse_args(search_argv(trained, out, "--generations", "2", "--flops-min", "2.5M", *RANK)))
    assert len(calls) == 3
    monkeypatch.setattr(train, "train", counted)
    summary = search.search(search.parse_args(
        search_argv(trained, out, "--generations", "2", "--flops-min", "2.5M", *RANK)))
    assert len(calls) == 3 + 4                              # the interrupted training and the three not yet run
    assert all(a.smoothing == 0.2 for a in calls)           # --retrain-flags reach every training alone
    rc = json.load(open(out / "rank_check.json"))
    archs = [Arch.from_dict(a["arch"]) for a in rc["archs"]]
    assert archs == rankcheck.spread_archs(TINY, 2_500_000, 4_000_000, 3, seed=0)   # not picked by the fitness
    # fitness: the inherited weights, recomputed here on the 80 held-out images and 19 of the generated ones
    net, space, loader = holdout_loader(trained, limit=99, extra=cli.HOLDOUT_EXTRA)
    for a, r in zip(archs, rc["archs"]):
        assert r["fitness"] == pytest.approx(np.mean([data.evaluate(net, loader, runs.Dist(), a, s)["top1"]
                                                      for s in vitas.SIDES]))
        with torch.no_grad():     # the true class's probability, by hand: mean over images, then sides
            p_true = [torch.cat([net(x, a, s).softmax(1)[torch.arange(len(y)), y] for x, y in loader]).mean().item()
                      for s in vitas.SIDES]
        assert r["inherited"]["prob"] == pytest.approx(np.mean(p_true), rel=1e-5)
    argvs = rc["settings"]["retrain_argv"]
    assert rc["settings"]["retrain_flags"] == ["--smoothing", "0.2"] == argvs[0][-2:]
    assert json.load(open(out / "search.json"))["settings"]["retrain_flags"] == ["--smoothing", "0.2"]
    # the checkpoint's seed, then +1
    assert len(argvs) == 2 and [a[a.index("--seed") + 1] for a in argvs] == ["0", "1"]
    assert all(a[a.index("--data-seed") + 1] == "0" for a in argvs)                       # on the same data
    # each seed's top-1 is the final val top-1 of its own training
    for a in rc["archs"]:
        for argv, top1 in zip(argvs, a["top1_seeds"]):
            folder = rankcheck.alone_folder(str(out / "retrain"), Arch.from_dict(a["arch"]), argv)
            res = json.load(open(os.path.join(folder, "result.json")))
            assert res["arch"] == a["arch"] and res["val"]["top1"] == top1
    fitness, by_seed = [a["fitness"] for a in rc["archs"]], [a["top1_seeds"] for a in rc["archs"]]
    expect = json.loads(json.dumps(rankcheck.rank_statistics(fitness, by_seed, archs, TINY)))
    others = rc["statistics"]["other_measures"]
    assert rc["statistics"] == {**expect, "other_measures": others} and set(others) == {"loss", "prob"}
    assert others["prob"]["kendall_tau"] == brute_tau_b([a["inherited"]["prob"] for a in rc["archs"]],
                                                         np.mean(by_seed, axis=1))
    assert rc["statistics"]["kendall_tau"] == brute_tau_b(fitness, np.mean(by_seed, axis=1))
    assert json.loads(json.dumps(summary["rank_check"])) == rc["statistics"]
    # alone on the finished folder: nothing trained again, the same figures
    again = search.search(search.parse_args(["--out", str(out), "--device", "cpu", *RANK]))
    assert len(calls) == 7 and again["rank_check"] == summary["rank_check"]
    assert json.load(open(out / "search.json"))["rank_check"] == rc["statistics"]


def test_rank_check_on_a_folder_without_a_search_is_a_clear_error(tmp_path, capsys):
    code, err = run_main(search, ["--out", str(tmp_path), *RANK], capsys)
    assert code == 2 and "--ckpt" in err and "Traceback" not in err
    (tmp_path / "search.json").write_text(json.dumps({"settings": {"ckpt": "x.pt", "flops_min": 1, "flops_max": 2}}))
    code, err = run_main(search, ["--out", str(tmp_path), *RANK], capsys)
    assert code == 2 and "does not exist" in err
    code, err = run_main(search, ["--out", str(tmp_path), "--rank-check", "1"], capsys)
    assert code == 2 and "at least 2" in err and "Traceback" not in err
    code, err = run_main(search, ["--out", str(tmp_path), "--rank-check", "2", "--retrain-flags", "--lr 1"], capsys)
    assert code == 2 and "--lr" in err and "--randaug" in err and "Traceback" not in err


def test_a_recipe_ranks_better_only_where_both_intervals_exclude_0_and_the_docs_say_no_more():
    """The claims rule on made-up comparisons with the default: an interval over the archs that
    excludes 0 beside one over the seeds that does not is no difference, in report.verdict and in
    the table RESULTS.md prints; both above 0: better; both below: worse."""
    def minus(archs, seeds):
        return {"difference": 0.1, "interval": archs, "over_seeds": {"interval": seeds}}
    cases = {"a": (minus((0.02, 0.16), (-0.06, 0.24)), "no difference"),
             "b": (minus((0.02, 0.16), (0.01, 0.2)), "better"),
             "c": (minus((-0.3, -0.1), (-0.4, -0.05)), "worse"),
             "d": (minus((-0.3, 0.1), (-0.4, -0.05)), "no difference"),
             "e": (minus((0.1, 0.2), None), "no difference")}
    for name, (m, want) in cases.items():
        m["over_seeds"] = {"interval": m["over_seeds"]["interval"]}
        assert report.verdict(m) == want, name
    doc = report.Doc(True)
    versus = [{"recipe": name, "seeds": [0, 1], **m} for name, (m, _) in cases.items()]
    report.ranking_section(doc, [], [], versus, "v2+strat")
    rows = {line.split(" | ")[0].strip("| "): line for line in doc.text().splitlines() if line.startswith("| ")}
    for name, (_, want) in cases.items():
        assert rows[name].endswith(f"| {want} |"), rows[name]


def test_tau_c_is_undefined_where_the_reference_cannot_rank():
    """Under tau* 0.3 (a reference whose seeds barely agree) tau_c is None, also in each bootstrap
    resample, and the rank check's description says it is undefined; at and above, it is the
    corrected tau."""
    r_low = next(r for r in np.linspace(0.01, 1, 1000) if rankcheck.oracle_tau(r) >= rankcheck.MIN_TAU_STAR)
    assert rankcheck.scored(0.2, r_low)["tau_c"] == pytest.approx(rankcheck.corrected_tau(0.2, r_low))
    assert rankcheck.scored(0.2, r_low - 0.01)["tau_c"] is None
    g = np.random.default_rng(0)
    z = g.normal(size=40)
    by_seed = np.stack([z + g.normal(scale=6, size=40) for _ in range(2)], 1).tolist()   # seeds barely agree
    fitness = z + g.normal(scale=0.5, size=40)
    r = rankcheck.agreement(fitness, by_seed, count=200)
    assert 0 < r["tau_star"] < rankcheck.MIN_TAU_STAR and r["tau_c"] is None and r["kendall_tau"] is not None
    assert "undefined" in rankcheck.describe({**r, "floors": {}})

def test_fitness_rows_score_top1_and_loss_on_the_same_supernets_against_a_brute_force_tau():
    """report.fitness_rows on made-up supernets whose minus-loss fitness orders the archs as the
    reference does and whose top-1 fitness is noisy: each fitness's tau against a brute-force tau-b,
    the top-3 regrets, and loss ranking better (both intervals above 0)."""
    g = np.random.default_rng(4)
    archs = random_archs(TINY, 14, seed=4)
    truth = g.normal(80, 3, 14)
    window = [(a, [float(t + g.normal(0, 0.5)), float(t + g.normal(0, 0.5))]) for a, t in zip(archs, truth)]
    mean = np.mean([t for _, t in window], axis=1)
    supers = [{"recipe": "x", "seed": s, "window": {"fitness": list(mean + g.normal(0, 4, 14)),
                                                    "loss_fitness": list(mean / 100)}} for s in range(3)]
    (row,) = report.fitness_rows(supers, window)
    r_s = rankcheck.reliability([t for _, t in window])[2]
    for name, key in (("top1", "fitness"), ("loss", "loss_fitness")):
        want = [rankcheck.scored(brute_tau_b(w["window"][key], mean), r_s)["tau_c"] for w in supers]
        assert row[f"tau_c_{name}"] == pytest.approx(want)
    assert row["regret_loss"] == [0.0] * 3 and all(r >= 0 for r in row["regret_top1"])
    assert row["seeds"] == 3 and report.verdict(row["minus"]) == "better"


def test_variant_rows_score_each_measure_against_top1_on_the_search_split():
    """report.variant_rows on made-up rescores: a variant ordering the archs as the reference does
    ranks better than a noisy top-1 (both intervals above 0); tau_c by a brute force; top-1 on the
    smallest split is the baseline of every variant of its recipe."""
    g = np.random.default_rng(5)
    archs = random_archs(TINY, 14, seed=5)
    truth = g.normal(80, 3, 14)
    window = [(a, [float(t + g.normal(0, 0.5)), float(t + g.normal(0, 0.5))]) for a, t in zip(archs, truth)]
    mean = np.mean([t for _, t in window], axis=1)
    noisy = {s: (list(mean + g.normal(0, 4, 14)), 0.3) for s in range(3)}
    exact = {s: (list(mean / 100), 3.0) for s in range(3)}
    rows = report.variant_rows({("x", "top1", 600): noisy, ("x", "prob", 6000): exact}, window)
    assert [(r["measure"], r["holdout_images"]) for r in rows] == [("top1", 600), ("prob", 6000)]
    r_s = rankcheck.reliability([t for _, t in window])[2]
    assert rows[0]["tau_c"] == pytest.approx([rankcheck.scored(brute_tau_b(noisy[s][0], mean), r_s)["tau_c"]
                                              for s in range(3)])
    assert rows[1]["regret"] == [0.0] * 3 and rows[1]["cpu_seconds"] == 3.0
    assert rows[0]["minus"]["difference"] == 0 and report.verdict(rows[1]["minus"]) == "better"


@pytest.mark.slow
def test_rescore_gives_the_stored_scores_again_retrains_a_missing_supernet_and_searches(tmp_path, monkeypatch):
    """experiment.py rescore on a small grid record: the stored held-out top-1 reproduced (with the
    checkpoint, and after it is deleted: retrained from the record's flags), N more held-out images
    scored by every measure, the search's pick under --fitness named as an outcome recipe; a record
    whose scores the supernet does not give stops the job."""
    monkeypatch.setattr(experiment, "SEARCH", ["--population", "6", "--generations", "2"])    # the grid's: 20 x 10
    results, scratch = str(tmp_path / "results"), str(tmp_path / "scratch")
    super_dir = os.path.join(scratch, "supernets", "v2+strat-s0", "super")
    argv = ["--out", super_dir, "--epochs", "1", "--synthetic-size", "300", "--batch-size", "32", "--device", "cpu",
            "--data-seed", "0", *WINDOW]
    train.train(train.parse_args(argv))
    net, space, loader = holdout_loader(os.path.join(super_dir, "checkpoint.pt"))
    window = experiment.reference_sets()["window"][0][::8]       # a record of 6 archs: those are rescored
    stored = [{"arch": a.to_dict(), "top1": float(np.mean([data.evaluate(net, loader, runs.Dist(), a, s)["top1"]
                                                           for s in vitas.SIDES]))} for a in window]
    path = runs.record_path(results, "supernets", "v2+strat-s0")
    os.makedirs(os.path.dirname(path))
    runs.write_json(path, {"recipe": "v2+strat", "seed": 0, "train_argv": argv, "inherited": {"window": stored}})
    job = experiment.rescore_job("v2+strat", 0, 40, "prob", results, scratch)
    experiment.execute(job)
    r = runs.read_record(job["path"])
    assert [x["top1"] for x in r["stored"]["inherited"]] == [x["top1"] for x in stored]
    assert r["larger"]["holdout_images"] == r["stored"]["holdout_images"] + 40 == 30 + 40
    assert {"top1", "loss", "prob"} <= set(r["larger"]["inherited"][0]) and r["variant"] == "v2+strat/prob@70"
    pick = r["search"]["evolution"]
    assert pick["fitness"] == pick["prob"] and 2e6 <= pick["flops"] <= 4e6
    assert experiment.searched_archs(results, ["v2+strat/prob@70"]) == {("v2+strat/prob@70", 0):
                                                                         Arch.from_dict(pick["arch"])}
    shutil.rmtree(super_dir)                                  # gone: trained again from the record's flags
    again = experiment.rescore_job("v2+strat", 0, 40, None, results, scratch)
    experiment.execute(again)
    retrained = runs.read_record(again["path"])
    assert retrained["stored"]["inherited"] == r["stored"]["inherited"] and "search" not in retrained
    stored[0]["top1"] += 1
    runs.write_json(path, {"recipe": "v2+strat", "seed": 0, "train_argv": argv, "inherited": {"window": stored}})
    os.remove(again["path"])
    with pytest.raises(cli.UserError, match="does not give the held-out top-1"):
        experiment.execute(again)


def test_experiment_recipes_name_a_grid_recipe_or_a_rescored_variant(capsys):
    assert experiment.recipe_arg("v2+strat/prob@6000") == "v2+strat/prob@6000"
    for bad, command in (("v9", "outcome"), ("v2+strat/acc@6000", "outcome"), ("v2+strat/prob@x", "outcome"),
                         ("v2+strat/prob@6000", "grid"), ("v2+strat/prob@6000", "rescore")):
        code, err = run_main(experiment, [command, "--recipes", bad], capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err


# -----------------------------------------------------------------------------
# (9) command lines and docs: bad input, numeric flags, the README's commands (issue 32)

@pytest.mark.parametrize("text, count", [
    ("1.0G", 10**9), ("900M", 9 * 10**8), ("350k", 350_000), ("350K", 350_000), ("1.2e9", 1_200_000_000),
    ("1200000", 1_200_000), (" 0.1g ", 10**8), ("2.5m", 2_500_000), (1_200_000, 1_200_000), (1.5e9, 1_500_000_000),
    (np.int64(7), 7), ("0", 0),
])
def test_parse_count_reads_units(text, count):
    assert parse_count(text) == count and type(parse_count(text)) is int


@pytest.mark.parametrize("text", ["", "abc", "1.0GB", "G", "-5M", "nan", "inf", "1,000", None, True, [1], -3])
def test_parse_count_rejects_junk_naming_the_text_and_forms(text):
    with pytest.raises(ValueError) as e:
        parse_count(text)
    assert repr(text) in str(e.value) and "900M" in str(e.value)


@pytest.mark.parametrize("setup, argv, words", [
    (None, ["--data", "/nonexistent/imagenet"], ["train/", "missing"]),
    (None, ["--data", "cifar10", "--data-root", "/nonexistent"], ["cifar10", "--download"]),
    ("{not json", ["--arch", "ARCH"], ["not valid JSON"]),
    ('{"patch_size": 4, "embed_dim": 32}', ["--arch", "ARCH"], ["missing", "blocks"]),
    (json.dumps(Arch(4, 40, (None,) * 6).to_dict()), ["--arch", "ARCH"], ["embed_dim = 40", "[32, 48, 64]"]),
    ("CORRUPT", [], ["corrupt", "checkpoint"]),
    (None, ["--init-from", "x.pt"], ["--init-from", "--arch"]),
])
def test_bad_input_gives_a_clear_error(tmp_path, capsys, setup, argv, words):
    if setup == "CORRUPT":
        (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x02 truncated")
    elif setup is not None:
        (tmp_path / "arch.json").write_text(setup)
    argv = [a.replace("ARCH", str(tmp_path / "arch.json")) for a in argv]
    code, err = run_main(train, ["--out", str(tmp_path), "--epochs", "1", *argv, *SMALL], capsys)
    assert code == 2 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


TRAIN_BAD = [("--batch-size", "0"), ("--epochs", "-1"), ("--epochs", "0"), ("--holdout", "1.5"),
             ("--synthetic-size", "0"), ("--synthetic-classes", "1"), ("--warmup-epochs", "-2"), ("--mixup", "-1"),
             ("--cutmix", "-0.5"), ("--drop-path", "1.5"), ("--save-every", "-3"), ("--log-every", "0"), ("--lr", "-1"),
             ("--lr", "0"), ("--min-lr", "-1"), ("--weight-decay", "-0.1"), ("--smoothing", "1"), ("--randaug", "31"),
             ("--reprob", "2"), ("--clip-grad", "-1"), ("--eval-batch-size", "0"), ("--eval-limit", "0"),
             ("--workers", "-1"), ("--seed", "-5"), ("--uniform-epochs", "-1"), ("--sandwich", "-1"),
             ("--flops-min", "-3M"), ("--lr", "nan"), ("--batch-size", "2.5"), ("--throughput-min", "0"),
             ("--throughput-max", "-5"), ("--calibration-seconds", "-1"), ("--throughput-batch", "0")]


SEARCH_BAD = [("--population", "1"), ("--generations", "0"), ("--mutate-prob", "2"), ("--eval-size", "0"),
              ("--batch-size", "0"), ("--parents", "1"), ("--seed", "-1"), ("--retrain-epochs", "-1"),
              ("--rank-check", "1"), ("--rank-epochs", "0"), ("--params-max", "x"), ("--throughput-min", "-1"),
              ("--throughput-batch", "0")]


@pytest.mark.parametrize("module, flag, value",
                         [("train", *b) for b in TRAIN_BAD] + [("search", *b) for b in SEARCH_BAD])
def test_every_numeric_flag_is_checked_at_parse_time(tmp_path, capsys, module, flag, value):
    out = tmp_path / "out"
    extra = [] if module == "train" else ["--ckpt", "none.pt", *WINDOW]
    code, err = run_main({"train": train, "search": search}[module],
                         ["--out", str(out), *extra, f"{flag}={value}"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert flag in err and value in err, err
    assert not out.exists()                                  # nothing written


@pytest.mark.parametrize("module", ["train", "search"])
def test_no_numeric_flag_takes_infinity_or_nan(tmp_path, capsys, module):
    """Every flag with a type (all the numeric ones) refuses inf, -inf, nan and an overflowing 1e400
    in one line: no OverflowError traceback, nothing written."""
    mod = {"train": train, "search": search}[module]
    flags = [a.option_strings[0] for a in mod.get_parser()._actions if a.type is not None and a.option_strings]
    assert len(flags) >= (25 if module == "train" else 12)
    extra = [] if module == "train" else ["--ckpt", "none.pt", *WINDOW]
    for flag in flags:
        for value in ("inf", "-inf", "nan", "1e400"):
            code, err = run_main(mod, ["--out", str(tmp_path / "out"), *extra, f"{flag}={value}"], capsys)
            assert (code == 2 and len(err.strip().splitlines()) == 1 and flag in err
                    and "Traceback" not in err), (flag, value, err)
    assert not (tmp_path / "out").exists()


def test_parents_default_follows_a_small_population():
    assert search.parse_args(["--ckpt", "x.pt", *WINDOW, "--population", "8"]).parents == 8
    assert search.parse_args(["--ckpt", "x.pt", *WINDOW]).parents == 10


def test_cross_flag_checks_at_parse_time(capsys):
    for module, argv, words in [(train, ["--lr", "1e-3", "--min-lr", "1e-2"], ["--min-lr", "--lr"]),
                                (search, ["--ckpt", "x.pt", *WINDOW, "--population", "4", "--parents", "6"],
                                 ["--parents", "population"]),
                                (search, ["--ckpt", "x.pt", "--flops-min", "4M", "--flops-max", "2M"], ["empty"]),
                                (search, ["--ckpt", "x.pt"], ["--flops-min"])]:
        code, err = run_main(module, argv, capsys)
        assert code == 2 and all(w in err for w in words) and len(err.strip().splitlines()) == 1, err


OTHER_TOOLS = {"--standalone", "--nproc_per_node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint", "--max-restarts",
               "--master-addr", "--master-port"}   # torchrun's


def flags_of(parser):
    return {s for a in parser._actions for s in a.option_strings}


def test_every_flag_the_docs_name_exists():
    known = set().union(*(flags_of(m.get_parser()) for m in (train, search, experiment, bench))) | OTHER_TOOLS
    for doc in ("README.md", "RESULTS.md", "SCALING.md"):
        with open(os.path.join(HERE, doc)) as f:
            named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]*(?:-[a-z0-9]+)*", f.read()))
        assert named and named <= known, (doc, sorted(named - known))


SCRIPTS = {"train.py": train, "search.py": search, "experiment.py": experiment, "bench.py": bench}


def doc_commands(text):
    """Each command of a markdown text that runs one of SCRIPTS, as (script, the flags before its
    name, the flags after it): the lines of code blocks (joined where they end in a backslash) and
    inline code spans (which may wrap), cut at &&, ; and |."""
    fence = r"^```[^\n]*\n(.*?)^```"
    lines = [line for block in re.findall(fence, text, re.S | re.M) for line in block.replace("\\\n", " ").splitlines()]
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", re.sub(fence, "", text, flags=re.S | re.M))]
    found = []
    for command in (c for line in lines for c in re.split(r"&&|;|\|", line)):
        words = command.split()
        at = next((i for i, w in enumerate(words) if os.path.basename(w) in SCRIPTS), None)
        if at is not None:
            flags = lambda ws: [w.split("=")[0] for w in ws if w.startswith("--")]   # noqa: E731
            found.append((os.path.basename(words[at]), flags(words[:at]), flags(words[at + 1:])))
    return found


def misplaced_flags(text):
    """(script, flag) for each flag a command of `text` gives a script whose own parser lacks it;
    a flag before the script's name must be torchrun's."""
    bad = []
    for script, before, after in doc_commands(text):
        bad += [("torchrun", f) for f in before if f not in OTHER_TOOLS]
        bad += [(script, f) for f in after if f not in flags_of(SCRIPTS[script].get_parser())]
    return bad


def test_every_flag_a_docs_command_gives_a_script_is_that_scripts():
    """Each command line of README.md and RESULTS.md against its own script's parser, not the pool
    of every tool's flags: a search.py flag on a train.py line fails (shown on a made-up text)."""
    made_up = ("```bash\ntorchrun --standalone --nproc_per_node=2 train.py --out x \\\n  --population 20\n```\n"
               "then `python search.py --ckpt c.pt --recipe\nv2` and `torchrun --epochs 3 bench.py`")
    assert misplaced_flags(made_up) == [("train.py", "--population"), ("search.py", "--recipe"),
                                        ("torchrun", "--epochs")]
    checked = set()
    for doc in ("README.md", "RESULTS.md", "SCALING.md"):
        with open(os.path.join(HERE, doc)) as f:
            text = f.read()
        assert misplaced_flags(text) == [], doc
        checked |= {script for script, _, after in doc_commands(text) if after}
    assert checked == set(SCRIPTS)                        # a command of every tool, with flags, was read


@pytest.mark.slow
def test_the_readmes_test_count_is_the_suites():
    with open(os.path.join(HERE, "README.md")) as f:
        said = int(re.search(r"^Tests \((\d+);", f.read(), re.M).group(1))
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "test_vitas.py"], cwd=HERE,
                         capture_output=True, text=True, timeout=120).stdout
    assert said == int(re.search(r"^(\d+) tests? collected", out, re.M).group(1))


# -----------------------------------------------------------------------------
# (10) experiments (experiment.py: workers, records in results/) and RESULTS.md (report.py)

@pytest.mark.slow
def test_parallel_runner_records_equal_a_serial_run_and_resume_skips_them(tmp_path, capsys):
    argv = ["--epochs", "1", "--synthetic-size", "300", "--batch-size", "32", "--device", "cpu", "--log-every", "1000"]
    arch = Arch(8, 48, (Block(2, 48, 128), None, Block(4, 32, 64), None, None, None))
    jobs = lambda root: [experiment.alone_job(arch, [*argv, "--seed", str(s)], str(root / "results"),
                                              str(root / "scratch"))
                         for s in (0, 1)]                           # one job per worker process
    runs.run_jobs(jobs(tmp_path / "serial"), 0, experiment.execute)
    runs.run_jobs(jobs(tmp_path / "parallel"), 2, experiment.execute)
    for serial, parallel in zip(jobs(tmp_path / "serial"), jobs(tmp_path / "parallel")):
        a, b = runs.read_record(serial["path"]), runs.read_record(parallel["path"])
        assert a["arch"] == serial["arch"] and a["argv"] == serial["argv"]
        # a worker process and this one may pick different fp32 kernels: the loss agrees to rounding
        for key in ("loss", "prob"):
            assert a["val"].pop(key) == pytest.approx(b["val"].pop(key), rel=1e-5)
        assert a.pop("provenance")["commit"] == b.pop("provenance")["commit"] != "unknown"   # the dates differ
        assert {k: v for k, v in a.items() if k != "cpu_minutes"} == {k: v for k, v in b.items() if k != "cpu_minutes"}
    assert len({json.dumps(runs.read_record(j["path"])["val"]) for j in jobs(tmp_path / "serial")}) == 2
    capsys.readouterr()
    runs.run_jobs(jobs(tmp_path / "parallel"), 2, experiment.execute)          # every record there: nothing runs
    assert "2 of 2 jobs already have a record; running 0" in capsys.readouterr().out


def test_split_recipe_scores_each_arch_on_its_patch_size_s_supernet(monkeypatch):
    """A split recipe trains one super-transformer per patch size on half the passes each; its record
    scores each reference arch with the one of its patch size and keeps the better search pick.
    train_and_search is replaced by made-up super-transformers (nothing trains)."""
    g, made = np.random.default_rng(0), []

    def fake(job, flags, epochs, scratch):
        patches = [int(flags[flags.index("--patch-sizes") + 1])] if "--patch-sizes" in flags else list(TINY.patch_sizes)
        made.append({"patch_sizes": patches, "epochs": epochs, "train_argv": flags, "search_argv": [],
                     "steps": 10 * epochs, "train_cpu_minutes": 1.0, "holdout_images": 600, "identity_prob": 0.5,
                     "sampled": {"block_share": g.uniform(size=6).tolist(), "depth_share": g.uniform(size=7).tolist(),
                                 "patch_share": {str(p): 1.0 for p in patches}},
                     "inherited": {name: {a: {"top1": float(g.uniform(50, 90)), "loss": 1.0} for a in archs
                                          if a.patch_size in patches}
                                   for name, (archs, _) in experiment.reference_sets().items()},
                     # the patch-4 one searches better by evolution, the patch-8 one by random search
                     "search": {algo: {"arch": Arch(patches[0], 32, (None,) * 6).to_dict(),
                                       "top1": top1 + (patches == [8]) * (20 - 40 * (algo == "evolution"))}
                                for algo, top1 in (("evolution", 70.0), ("random", 60.0))}})
        return made[-1]

    monkeypatch.setattr(experiment, "train_and_search", fake)
    record = experiment.run_supernet({"recipe": "fair-split", "seed": 0, "scratch": "unused"})
    epochs = experiment.PASSES // experiment.passes_of(experiment.GRID["fair-split"])
    assert [(m["patch_sizes"], m["epochs"]) for m in made] == [([4], epochs // 2), ([8], epochs // 2)]   # equal passes
    own = {m["patch_sizes"][0]: m for m in made}
    for name, (archs, _) in experiment.reference_sets().items():
        scored = record["inherited"][name]
        assert [Arch.from_dict(x["arch"]) for x in scored] == archs                  # the reference's order
        assert [x["top1"] for x in scored] == [own[a.patch_size]["inherited"][name][a]["top1"] for a in archs]
    assert record["search"] == {"evolution": made[0]["search"]["evolution"], "random": made[1]["search"]["random"]}
    assert record["steps"] == 2 * 10 * (epochs // 2) and record["train_cpu_minutes"] == 2.0
    assert record["sampled"]["patch_share"] == {"4": 0.5, "8": 0.5}
    for key in ("block_share", "depth_share"):                           # equal steps: the plain mean
        halves = zip(*(m["sampled"][key] for m in made))
        assert record["sampled"][key] == pytest.approx([(x + y) / 2 for x, y in halves])
    assert [p["patch_sizes"] for p in record["parts"]] == [[4], [8]]
    made.clear()
    whole = experiment.run_supernet({"recipe": "fair", "seed": 0, "scratch": "unused"})
    assert [(m["patch_sizes"], m["epochs"]) for m in made] == [([4, 8], epochs)]
    assert set(whole) == {"recipe", "seed", "passes_per_step", *made[0]} - {"patch_sizes"}      # as before the split
    assert whole["search"] == made[0]["search"] and whole["steps"] == made[0]["steps"]


def test_outcome_wins_only_above_both_designs_and_the_random_median(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "train", None)                 # nothing may train
    results, scratch = str(tmp_path), str(tmp_path / "scratch")
    compared = experiment.comparison_archs()
    assert len(compared) == 2 + experiment.RANDOM_ARCHS and len(set(compared.values())) == len(compared)
    assert all(experiment.LO <= vitas.flops(a, TINY) <= experiment.HI for a in compared.values())
    g = np.random.default_rng(1)
    searched = {"v2": compared["random 3"], "fair": TINY.max_arch()}      # v2 picked one of the random archs
    os.makedirs(tmp_path / "supernets")
    for recipe, arch in searched.items():
        runs.write_json(str(tmp_path / "supernets" / f"{recipe}-s0.json"),
                         {"recipe": recipe, "seed": 0, "search": {"evolution": {"arch": arch.to_dict()}}})
    jobs = experiment.outcome_jobs(results, scratch, ["v2", "fair"])
    seeds, designed, randoms = experiment.OUTCOME_SEEDS, experiment.DESIGN_SEEDS, experiment.RANDOM_SEEDS
    # designs on theirs, picks on the outcome's, random archs on theirs, the arch both picked and random once a seed
    assert len(jobs) == (2 * len(designed) + 2 * len(seeds) + experiment.RANDOM_ARCHS * len(randoms)
                         - len(set(seeds) & set(randoms)))
    assert [(j["arch"], j["argv"]) for j in jobs[:2 * len(designed)]] == [     # the designs first
        (compared[n].to_dict(), experiment.alone_argv(s)) for n in ("uniform", "deit") for s in designed]
    top1 = {}
    for job in jobs:
        top1.setdefault(json.dumps(job["arch"]), []).append(float(g.uniform(60, 90)))
        os.makedirs(os.path.dirname(job["path"]), exist_ok=True)
        runs.write_json(job["path"], {"val": {"top1": top1[json.dumps(job["arch"])][-1]}})
    mean = lambda a: np.mean(top1[json.dumps(a.to_dict())])
    rows = {r["recipe"]: r for r in experiment.outcome_rows(results, ["v2", "fair"])}
    median = np.median([np.mean(top1[json.dumps(a.to_dict())][:len(randoms)])        # their seeds come first
                        for name, a in compared.items() if name.startswith("random")])
    for recipe, arch in searched.items():
        assert rows[recipe]["top1"] == pytest.approx(mean(arch))
        assert rows[recipe]["wins"] == (mean(arch) > max(mean(compared["uniform"]), mean(compared["deit"]), median))
    assert rows["fair"]["random_median"] == pytest.approx(median)
    margins = {m["recipe"]: m for m in rankcheck.outcome_margins(list(rows.values()))}
    best = max(mean(compared["uniform"]), mean(compared["deit"]))
    for recipe, arch in searched.items():
        assert margins[recipe]["margin"]["difference"] == pytest.approx(mean(arch) - best)
        assert margins[recipe]["wins"] == int(rows[recipe]["wins"]) and margins[recipe]["seeds"] == 1


def test_the_outcomes_margin_interval_counts_the_training_noise_of_picks_and_designs():
    """rankcheck.margin_interval: the margin is the picks' mean minus the better design's mean; with
    every pick alike on every training seed, a t interval over supernet seeds would have no width,
    while the designs' own training noise widens this one; without any noise it has none."""
    picks = [[85.0, 85.0, 85.0, 85.0]] * 3
    designs = [[83.0, 86.0, 82.0, 85.0], [80.0, 81.0, 79.0, 80.0]]
    m = rankcheck.margin_interval(picks, designs)
    assert m["difference"] == pytest.approx(85.0 - 84.0)
    assert rankcheck.seed_difference([85.0] * 3, 84.0)["interval"] == (1.0, 1.0)
    lo, hi = m["interval"]
    assert lo < 0 < 1 < hi
    # designs trained on more seeds than the picks: each design's own mean, its own columns resampled
    assert rankcheck.margin_interval(picks, [[84.0] * 16, [80.0] * 16])["interval"] == (1.0, 1.0)
    more = rankcheck.margin_interval(picks, np.tile(designs, 4))      # the same noise, 16 seeds: narrower
    assert more["difference"] == pytest.approx(1.0) and lo < more["interval"][0] < 1 < more["interval"][1] < hi
    assert rankcheck.margin_interval(picks, [[84.0] * 4, [80.0] * 4])["interval"] == (1.0, 1.0)
    # the designs' training seeds resampled apart from the picks': picks and design that move together
    # seed by seed (a difference of 1 on every seed) still leave the margin uncertain
    together = rankcheck.margin_interval([[85.0, 86.0, 84.0, 85.0]] * 3, [[84.0, 85.0, 83.0, 84.0], [80.0] * 4])
    assert together["difference"] == pytest.approx(1.0) and together["interval"][0] < 1 < together["interval"][1]
    # the better design is chosen again in each resample: never above the max over designs
    g = np.random.default_rng(3)
    picks, designs = g.normal(85, 1, (5, 4)), g.normal(84, 1, (2, 4))
    brute = picks.mean() - designs.mean(axis=1).max()
    assert rankcheck.margin_interval(picks, designs)["difference"] == pytest.approx(brute)


def test_design_standing_counts_the_window_archs_below_the_better_design():
    window = [(None, [80.0, 82.0]), (None, [86.0, 86.0]), (None, [84.0, 85.0]), (None, [70.0])]
    outcome = [{"designs": {"deit": [84.0, 84.0, 84.5], "uniform": [85.0, 84.0, 86.0]}}]
    assert rankcheck.design_standing(outcome, window) == {"design": "uniform", "top1": 85.0, "seeds": 3, "above": 3,
                                                       "archs": 4, "range": (70.0, 86.0)}


def test_the_default_search_is_the_rescore_that_searched_as_search_py_does(tmp_path):
    """experiment.default_search: of the default recipe's rescores, the one that searched by top-1
    with EXTRA generated images beside the grid's split; None before there is one."""
    default = train.DEFAULT_RECIPE
    os.makedirs(tmp_path / "rescore")

    def rescore(name, recipe, fitness, extra):
        record = {"recipe": recipe, "fitness": fitness, "stored": {"holdout_images": 600},
                  "larger": {"holdout_images": 600 + extra}}
        runs.write_json(str(tmp_path / "rescore" / f"{name}.json"),
                        {**record, **({"variant": f"{recipe}/{fitness}@{600 + extra}"} if fitness else {})})

    extra = experiment.EXTRA
    for name, recipe, fitness, n in (("a", default, None, extra), ("b", default, "loss", extra),
                                     ("c", default, "top1", 2000), ("d", "v2", "top1", extra)):
        rescore(name, recipe, fitness, n)
    assert experiment.default_search(experiment.records(str(tmp_path), "rescore"), default) is None
    rescore("e", default, "top1", extra)
    assert experiment.default_search(experiment.records(str(tmp_path), "rescore"), default) == runs.read_record(
        str(tmp_path / "rescore" / "e.json"))


def test_experiment_recipes_named_as_train_recipes_train_as_they_do():
    """An experiment recipe of train.py's name (v2+strat's records predate the train.py recipe) and
    train.py's recipe of that name resolve to the same settings."""
    shared = set(experiment.GRID) & set(train.RECIPES)
    assert {"v1", "v2", "fair", "v2+strat", train.DEFAULT_RECIPE} <= shared
    for name in shared:
        ours = vars(train.resolve_recipe(train.parse_args(experiment.GRID[name])))
        theirs = vars(train.resolve_recipe(train.parse_args(["--recipe", name])))
        assert {**ours, "recipe": name} == theirs, name


def test_reference_jobs_train_the_reported_archs_beside_the_window(tmp_path):
    jobs = experiment.reference_jobs(str(tmp_path), str(tmp_path / "scratch"))
    sets = experiment.reference_sets()
    reported = experiment.reported_reference()
    assert reported == list(record.reported_archs(TINY, (experiment.LO, experiment.HI)).values())
    want = {(a, s) for name, (archs, seeds) in sets.items() for a in archs for s in seeds[a]}
    want |= {(a, s) for a in reported for s in experiment.REFERENCE_SEEDS}
    got = [(Arch.from_dict(j["arch"]), experiment.alone_argv(0).index("--seed"), j) for j in jobs]
    assert {(a, int(j["argv"][i + 1])) for a, i, j in got} == want and len(jobs) == len(want)
    seeds = [int(j["argv"][i + 1]) for _, i, j in got]
    assert seeds == sorted(seeds)                       # seed by seed


def fmt2(values):
    return report.mean_sd(values)


@pytest.mark.slow
def test_experiment_table_reads_results_without_training(tmp_path, monkeypatch, capsys):
    """The table of made-up records: the reference's reliability and a supernet's tau recomputed here."""
    monkeypatch.setattr(train, "train", None)                 # nothing may train
    results = str(tmp_path)
    (window, seeds), = [experiment.reference_sets()["window"]]
    g = np.random.default_rng(0)
    truth = {a: g.normal() for a in window}
    top1 = {}
    for a in window:
        for s in seeds[a]:
            top1[a, s] = 70 + 5 * truth[a] + g.normal()
            job = experiment.alone_job(a, experiment.alone_argv(s), results, str(tmp_path / "scratch"))
            os.makedirs(os.path.dirname(job["path"]), exist_ok=True)
            runs.write_json(job["path"], {"arch": a.to_dict(), "argv": job["argv"], "val": {"top1": top1[a, s]}})
    reported = dict(zip(("largest", "smallest", "middle"), experiment.reported_reference()))
    alone = {}                                  # the reported archs trained alone: seeds 0 and 1 only
    for a in reported.values():
        for s in (0, 1):
            alone.setdefault(a, []).append(float(g.uniform(40, 60)))
            job = experiment.alone_job(a, experiment.alone_argv(s), results, str(tmp_path / "scratch"))
            runs.write_json(job["path"], {"arch": a.to_dict(), "argv": job["argv"], "val": {"top1": alone[a][-1]}})
    at_end = {k: float(g.uniform(20, 50)) for k in reported}
    os.makedirs(tmp_path / "supernets")
    inherited = {}
    default = experiment.train.DEFAULT_RECIPE               # a remedy is compared with v2 and with the default
    assert default != "v2" and default in experiment.GRID
    for recipe, noise in (("v2", 0.5), (default, 2.0)):
        inherited[recipe] = [{"arch": a.to_dict(), "top1": truth[a] + g.normal(scale=noise), "loss": 1.0}
                             for a in window]
        runs.write_json(str(tmp_path / "supernets" / f"{recipe}-s0.json"), {
            "recipe": recipe, "seed": 0, "train_cpu_minutes": 9.0,
            "inherited": {"window": inherited[recipe], "space": []},
            "sampled": {"block_share": [1, .8, .4, .2, .1, .01], "patch_share": {"4": .7, "8": .3}}, "search": {},
            **({"reported": {k: {"arch": a.to_dict(), "val_top1": at_end[k]} for k, a in reported.items()}}
               if recipe == "v2" else {})})                   # the default's record is older than the field
    out = experiment.table(results)
    ref = out["reference"][0]
    S = len(experiment.REFERENCE_SEEDS)
    assert S >= 2 and all(seeds[a] == tuple(range(S)) for a in window)
    assert ref["set"] == "window" and ref["archs"] == ref["second_seed"] == 48 and ref["seeds"] == S
    sd = np.sqrt(np.mean([np.var([top1[a, s] for s in range(S)], ddof=1) for a in window]))  # equal seeds: plain mean
    assert ref["top1_sd"] == pytest.approx(sd)
    pairs = list(itertools.combinations(range(S), 2))
    p8 = next(r for r in out["reference"] if r["set"] == "window p8")                # the deep archs apart
    deep = [a for a in window if a.patch_size == 8]
    assert p8["archs"] == len(deep) == 24 and p8["seed_tau"] == pytest.approx(np.mean(
        [brute_tau_b([top1[a, i] for a in deep], [top1[a, j] for a in deep]) for i, j in pairs]))
    pair_taus = [brute_tau_b([top1[a, i] for a in window], [top1[a, j] for a in window]) for i, j in pairs]
    assert ref["seed_tau"] == pytest.approx(np.mean(pair_taus))
    r1 = np.sin(np.pi * ref["seed_tau"] / 2)
    assert ref["tau_star"] == pytest.approx(2 / np.pi * np.arcsin(np.sqrt(S * r1 / (1 + (S - 1) * r1))))  # S-seed mean
    mean = [np.mean([top1[a, s] for s in range(S)]) for a in window]
    tau = {r: brute_tau_b([x["top1"] for x in inherited[r]], mean) for r in inherited}
    w = next(r for r in out["supernets"] if r["recipe"] == "v2")["window"]
    assert w["kendall_tau"] == pytest.approx(tau["v2"])
    dflt = next(r for r in out["recipes"] if r["recipe"] == default)
    assert dflt["minus"]["v2"]["difference"] == pytest.approx(tau[default] - tau["v2"])
    assert dflt["minus"]["v2"]["over_seeds"]["difference"] == pytest.approx(tau[default] - tau["v2"])
    v2 = next(r for r in out["versus_default"] if r["recipe"] == "v2")               # and v2 against the default
    assert v2["difference"] == pytest.approx(tau["v2"] - tau[default])
    assert dflt["minus"][default] is None and [r["recipe"] for r in out["versus_default"]] == ["v2"]
    assert dflt["minus_flops"]["difference"] == pytest.approx(
        tau[default] - brute_tau_b([vitas.flops(a, TINY) for a in window], mean))
    learning = {r["recipe"]: r for r in out["learning"]}                # inherited / alone, by hand
    for recipe in inherited:
        assert learning[recipe]["ratios"] == [pytest.approx(np.mean([x["top1"] / m
                                                                    for x, m in zip(inherited[recipe], mean)]))]
    assert learning["v2"]["reported"] == [pytest.approx(np.mean([at_end[k] / np.mean(alone[a])
                                                                 for k, a in reported.items()]))]
    assert learning[default]["reported"] == [] and learning[default]["reported_over_seeds"] is None
    printed = capsys.readouterr().out
    assert "window" in printed and f"{ref['tau_star']:.2f}" in printed and f"{w['kendall_tau']:.2f}" in printed
    # RESULTS.md and the README's summary written from these figures, then checked; a changed figure is stale
    readme, results_md = tmp_path / "README.md", tmp_path / "RESULTS.md"
    readme.write_text(f"intro\n{report.SUMMARY[0]}\nold\n{report.SUMMARY[1]}\nrest\n")
    report.write_docs(out, str(results_md), str(readme), check=False)
    assert results_md.read_text() == out["text"] and f"| {fmt2(dflt['tau_c'])} |" in readme.read_text()
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("rest\n")
    report.write_docs(out, str(results_md), str(readme), check=True)
    results_md.write_text(out["text"].replace(f"{w['kendall_tau']:.2f}", "0.99", 1))
    with pytest.raises(cli.UserError, match="RESULTS.md differ"):
        report.write_docs(out, str(results_md), str(readme), check=True)


def test_table_check_refuses_a_stale_readme_summary_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """`experiment.py table --markdown --check RESULTS.md` where RESULTS.md is as results/ gives it but
    one figure of the README's summary (between its markers) is not: exit 2, one line naming the
    README, neither file touched. Text outside the markers is the README's own: no check. The table's
    figures are made up here (experiment.table replaced: nothing is read or trained)."""
    default = train.DEFAULT_RECIPE
    figures = {"text": "# Results\nmade up\n", "default": default,
               "reference": [{"set": "window", "archs": 48, "seeds": 4, "tau_star": 0.8}],
               "recipes": [{"recipe": "v2", "tau_c": [0.5, 0.7]}, {"recipe": default, "tau_c": [0.7, 0.74]}],
               "learning": [{"recipe": "v2", "ratios": [0.8, 0.82]}, {"recipe": default, "ratios": [0.81, 0.85]}],
               "margins": [{"recipe": r, "wins": w, "seeds": n, "margin": {"difference": m, "interval": i}}
                           for r, w, n, m, i in (("v2", 3, 4, 0.21, [-0.5, 1.0]), (default, 6, 8, 0.3, [-0.8, 1.33]),
                                                 (f"{default}/top1@6000", 14, 16, 0.7, [0.1, 1.3]))],
               "default_search": {"variant": f"{default}/top1@6000", "stored": {"holdout_images": 600},
                                  "larger": {"holdout_images": 6000}},
               "variants": [{"recipe": default, "measure": m, "holdout_images": 6000, "tau_c": t}
                            for m, t in (("loss", [0.7, 0.9]), ("top1", [0.76, 0.8]))],
               "design_standing": {"design": "uniform", "top1": 85.62, "seeds": 16, "above": 46, "archs": 48,
                                   "range": (65.96, 86.02)}}
    monkeypatch.setattr(experiment, "table", lambda results, markdown=False: figures)
    monkeypatch.setattr(experiment, "SIZE", experiment.SIZE)                 # experiment.run sets it
    readme, results_md = tmp_path / "README.md", tmp_path / "RESULTS.md"
    readme.write_text(f"intro\n{report.SUMMARY[0]}\nold\n{report.SUMMARY[1]}\nrest\n")
    write, check = (["table", "--markdown", mode, str(results_md), "--results", str(tmp_path)]
                    for mode in ("--write", "--check"))
    assert run_main(experiment, write, capsys)[0] == 0
    row = "| `v2` | 0.60 ± 0.14 | 0.81 ± 0.01 | 3 of 4, +0.2 [-0.50, 1.00] |"     # the made-up figures, written out
    assert row in readme.read_text() and results_md.read_text() == figures["text"]
    # the default's row: its search as search.py runs it by default; the grid's search below
    text = readme.read_text()
    assert f"| `{default}` (default) | 0.72 ± 0.03 | 0.83 ± 0.03 | 14 of 16, +0.7 [0.10, 1.30] |" in text
    assert "scores on 6,000 held-out images (tau_c 0.78 ± 0.03)" in text
    assert "the grid's 600: 6 of 8, +0.3 [-0.80, 1.33]" in text
    assert "(uniform, 85.6 over 16 training seeds) is above 46 of the 48 window archs (66.0-86.0)" in text
    assert run_main(experiment, check, capsys)[0] == 0                       # as written: passes
    readme.write_text(readme.read_text().replace("intro", "another intro").replace("rest", "more"))
    assert run_main(experiment, check, capsys)[0] == 0                       # outside the summary: the README's
    summary, body = readme.read_text(), results_md.read_text()
    assert summary.index(report.SUMMARY[0]) < summary.index(row) < summary.index(report.SUMMARY[1])
    readme.write_text(summary.replace(row, row.replace("0.60 ± 0.14", "0.61 ± 0.14")))
    stale, times = readme.read_text(), {f: f.stat().st_mtime_ns for f in (readme, results_md)}
    code, err = run_main(experiment, check, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {readme} differ") and "Traceback" not in err, err
    assert readme.read_text() == stale and results_md.read_text() == body
    assert {f: f.stat().st_mtime_ns for f in (readme, results_md)} == times


def test_results_md_counts_each_record_sets_commits_and_the_records_without_one(tmp_path):
    """provenance_rows on made-up records: per folder of results/, the records of each commit (+changes
    where the tree had uncommitted ones) and those without; RESULTS.md's section lists them."""
    records = {"alone/a.json": {"commit": "1" * 40, "uncommitted_changes": False},
               "alone/b.json": {"commit": "1" * 40, "uncommitted_changes": True},
               "alone/c.json": None, "supernets/d.json": {"commit": "2" * 40, "uncommitted_changes": False}}
    for name, source in records.items():
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        (tmp_path / name).write_text(json.dumps({} if source is None else {"provenance": source}))
    rows = report.provenance_rows(str(tmp_path))
    assert rows == [{"set": "alone", "records": 3, "commits": {"1111111111": 1, "1111111111+changes": 1, "none": 1}},
                    {"set": "supernets", "records": 1, "commits": {"2222222222": 1}}]
    doc = report.Doc(True)
    report.provenance_section(doc, rows)
    assert "| results/alone | 3 | 1111111111 (1), 1111111111+changes (1), none (1) |" in doc.text()
