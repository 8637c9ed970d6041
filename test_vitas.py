"""Tests: python -m pytest -q test_vitas.py  (CPU, a few minutes on 2 cores)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import vitas
from vitas import Arch, Block, SearchSpace

TINY = SearchSpace.preset("tiny")
BIG = SearchSpace.preset("vitas-1g")
VITAS_C = Arch(16, 230, (Block(3, 144, 720),) * 12 + (None,) * 4)


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


# -----------------------------------------------------------------------------
# search space and arch records

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


def test_max_and_min_arch_bound_the_space():
    for space in (TINY, BIG):
        hi, lo = vitas.flops(space.max_arch(), space), vitas.flops(space.min_arch(), space)
        space.validate(space.max_arch()), space.validate(space.min_arch())
        for arch in random_archs(space, 300, seed=2):
            assert vitas.flops(arch, space) <= hi
            if arch.depth == space.depth:
                assert vitas.flops(arch, space) >= lo


def test_sample_is_reproducible_from_torch_and_numpy_generators():
    import numpy as np
    a = [TINY.sample(torch.Generator().manual_seed(5)) for _ in range(2)]
    b = [TINY.sample(np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1] and b[0] == b[1]
    g = torch.Generator().manual_seed(0)
    frac = sum(b is None for _ in range(400) for b in TINY.sample(g).blocks) / (400 * TINY.depth)
    assert 0.45 < frac < 0.55                      # uniform phase: identity with probability 1/2
    assert all(b is None for b in TINY.sample(g, identity_prob=1.0).blocks)


# -----------------------------------------------------------------------------
# analytical FLOPs and params

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


@pytest.mark.parametrize("space", [TINY, BIG], ids=["tiny", "vitas-1g"])
def test_flops_and_params_match_pytorch_on_exported_models(space):
    net = vitas.SuperTransformer(space)
    archs = random_archs(space, 100, seed=3) + [space.max_arch(), space.min_arch()]
    assert any(b is None for a in archs for b in a.blocks[:-1])   # identity before a real block occurs
    for arch in archs:
        vit = vitas.export(net, arch, side="right")
        assert vitas.params(arch, space) == sum(p.numel() for p in vit.parameters())
        assert vitas.flops(arch, space) == torch_count(vit, space), str(arch)


def test_counter_matches_pytorch_on_deit_tiny():
    space = deit_space(192, 3)
    arch = Arch(16, 192, (Block(3, 192, 768),) * 12)
    with torch.device("meta"):
        vit = vitas.ViT(arch, space)
    assert vitas.flops(arch, space) == torch_count(vit, space)


# -----------------------------------------------------------------------------
# super-transformer and export

def test_export_equals_super_transformer_tiny_both_sides():
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(TINY)).eval()
    x = torch.randn(4, 3, 32, 32)
    differs = 0
    for arch in random_archs(TINY, 24, seed=4):
        outs = {}
        for side in vitas.SIDES:
            vit = vitas.export(net, arch, side)
            fresh = vitas.ViT(arch, TINY)
            fresh.load_state_dict(vit.state_dict())
            with torch.no_grad():
                outs[side] = net(x, arch, side)
                assert torch.allclose(outs[side], vit(x), atol=1e-5), (str(arch), side)
                assert torch.allclose(outs[side], fresh.eval()(x), atol=1e-5)
        differs += not torch.allclose(outs["left"], outs["right"], atol=1e-3)
    assert differs >= 12          # left and right really are different slices


def test_export_equals_super_transformer_vitas_1g():
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(BIG), scale=0.02).eval()
    x = torch.randn(1, 3, 224, 224)
    for arch, side in [(VITAS_C, "left"), (VITAS_C, "right")] + [(a, "right") for a in random_archs(BIG, 2, seed=5)]:
        with torch.no_grad():
            assert torch.allclose(net(x, arch, side), vitas.export(net, arch, side)(x), rtol=1e-4, atol=1e-4)


def used_region(name, arch, space):
    """Widths each dim of parameter `name` uses for `arch`, or None if the arch does not use it."""
    c = arch.embed_dim
    parts = name.split(".")
    if parts[0] == "tokens":
        if parts[1] != f"p{arch.patch_size}":
            return None
        return {"weight": [c, None, None, None], "bias": [c], "cls_token": [None, None, c], "pos_embed": [None, None, c]}[parts[-1]]
    if parts[0] == "norm":
        return [c]
    if parts[0] == "head":
        return [None, c] if parts[1] == "weight" else [None]
    b = arch.blocks[int(parts[1])]
    if b is None:
        return None
    a, m, kind = b.attn_dim, b.mlp_dim, parts[-1]
    if parts[2] == "attn" and parts[3] in ("q", "k"):
        if parts[4] != f"h{b.heads}":
            return None
        return [a, c] if kind == "weight" else [a]
    return {("attn", "v"): [a, c], ("attn", "proj"): [c, a], ("fc1",): [m, c], ("fc2",): [c, m],
            ("norm1",): [c], ("norm2",): [c]}[tuple(parts[2:-1])][: 2 if kind == "weight" else 1]


def region_mask(shape, widths, side):
    mask = torch.ones(shape, dtype=torch.bool)
    for dim, w in enumerate(widths):
        if w is not None and w < shape[dim]:
            keep = torch.zeros(shape[dim], dtype=torch.bool)
            keep[:w] = True
            if side == "right":
                keep = keep.flip(0)
            mask &= keep.view([-1 if d == dim else 1 for d in range(len(shape))])
    return mask


@pytest.mark.parametrize("side", vitas.SIDES)
def test_gradients_touch_only_the_slice(side):
    torch.manual_seed(0)
    net = perturb(vitas.SuperTransformer(TINY))
    arch = Arch(4, 48, (Block(2, 32, 128), None, Block(4, 48, 64), None, None, Block(2, 48, 192)))
    F.cross_entropy(net(torch.randn(8, 3, 32, 32), arch, side), torch.arange(8)).backward()
    for name, p in net.named_parameters():
        widths = used_region(name, arch, TINY)
        if widths is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        mask = region_mask(p.shape, widths, side)
        assert not p.grad[~mask].any(), f"{name}: gradient outside the {side} slice"
        assert p.grad[mask].any(), f"{name}: no gradient inside the {side} slice"


def test_largest_arch_trains_every_parameter_of_its_branch():
    net = perturb(vitas.SuperTransformer(TINY))
    arch = TINY.max_arch()
    F.cross_entropy(net(torch.randn(8, 3, 32, 32), arch), torch.arange(8)).backward()
    for name, p in net.named_parameters():
        other_patch = name.startswith("tokens.") and not name.startswith(f"tokens.p{arch.patch_size}.")
        other_heads = (".attn.q." in name or ".attn.k." in name) and f".h{arch.blocks[0].heads}." not in name
        if other_patch or other_heads:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.any(), name


def test_wrong_image_size_and_side_are_rejected():
    net = vitas.SuperTransformer(TINY)
    arch = TINY.min_arch()
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*\(2, 3, 33, 33\)"):
        net(torch.randn(2, 3, 33, 33), arch)
    with pytest.raises(ValueError, match="side"):
        net(torch.randn(2, 3, 32, 32), arch, side="middle")
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


# -----------------------------------------------------------------------------
# train.py: sampling, distributed training, resume, retrain, bad input

import os
import subprocess
import sys

import numpy as np

import train

HERE = os.path.dirname(os.path.abspath(__file__))
# a few-second configuration of the synthetic default
SMALL = ["--synthetic-size", "640", "--batch-size", "32", "--eval-limit", "128", "--log-every", "5", "--device", "cpu"]


def torchrun(script, *argv, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, env=env, timeout=300)


def run_main(module, argv, capsys):
    """A CLI run in this process; returns (exit code, stderr)."""
    try:
        module.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_learned_identity_probability_concentrates_flops_in_the_window():
    lo, hi = 2_000_000, 4_000_000
    sampler = train.ArchSampler(TINY, seed=0, uniform_epochs=1, flops_min=lo, flops_max=hi)
    raw = [vitas.flops(TINY.sample(np.random.default_rng(i), sampler.identity_prob), TINY) for i in range(2000)]
    assert lo <= np.mean(raw) <= hi                              # p solved so the mean lands in the window
    learned = [vitas.flops(sampler(step, epoch=1), TINY) for step in range(500)]
    assert np.mean([lo <= f <= hi for f in learned]) >= 0.9
    uniform = [sampler(step, epoch=0) for step in range(500)]    # uniform phase first: p = 1/2
    assert 0.45 < np.mean([b is None for a in uniform for b in a.blocks]) < 0.55
    assert sampler(7, 1) == sampler(7, 1)                        # (seed, step) decides the arch


def test_unreachable_flops_window_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="unreachable"):
        train.ArchSampler(TINY, 0, 0, flops_min=10**12, flops_max=2 * 10**12)
    code, err = run_main(train, ["--out", str(tmp_path), "--flops-min", "1G", "--flops-max", "2G", *SMALL], capsys)
    assert code == 2 and "unreachable" in err and "Traceback" not in err


def test_two_process_torchrun_trains_the_same_arch_on_every_rank(tmp_path):
    out = tmp_path / "ddp"
    r = torchrun("train.py", "--out", str(out), "--epochs", "2", "--uniform-epochs", "1", "--flops-min", "2M",
                 "--flops-max", "4M", "--rank-dump", *SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(2)]
    assert len(ranks[0]["archs"]) == 18 and ranks[0]["archs"] == ranks[1]["archs"]
    assert len(set(ranks[0]["archs"])) > 10                       # a new sub-network (almost) every step
    for k, v in ranks[0]["model"].items():
        assert torch.equal(v, ranks[1]["model"][k]), k
    ck = train.load_checkpoint(out / "checkpoint.pt")
    for k, v in ck["model"].items():                              # saved without DDP's "module." prefix
        assert torch.equal(v, ranks[0]["model"][k])
    assert SearchSpace(**ck["space"]) == TINY and ck["identity_prob"] is not None
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["epoch"] for r in log] == [1, 2] and log[0]["identity_prob"] == 0.5
    assert set(log[1]["val"]) == {"largest", "smallest", "middle"}


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    common = ["--epochs", "2", "--uniform-epochs", "1", "--flops-min", "2M", "--flops-max", "4M", "--save-every", "3",
              "--drop-path", "0.1", "--mixup", "0.8", *SMALL]
    whole = train.train(train.get_parser().parse_args(["--out", str(tmp_path / "a"), *common]))
    assert train.train(train.get_parser().parse_args(["--out", str(tmp_path / "b"), "--stop-after", "22", *common])) is None
    assert train.load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 22     # mid-epoch 2 (18 steps each)
    resumed = train.train(train.get_parser().parse_args(["--out", str(tmp_path / "b"), *common]))
    a, b = (train.load_checkpoint(tmp_path / x / "checkpoint.pt")["model"] for x in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["loss"] == whole["loss"] and resumed["val"] == whole["val"]


def test_retrain_from_arch_json(tmp_path):
    arch = Arch(8, 48, (Block(2, 48, 128), None, Block(4, 32, 64), None, None, Block(2, 64, 192)))
    (tmp_path / "arch.json").write_text(json.dumps(arch.to_dict()))
    res = train.train(train.get_parser().parse_args(["--arch", str(tmp_path / "arch.json"), "--out", str(tmp_path / "r"),
                                                     "--epochs", "1", *SMALL]))
    assert 0 <= res["val"]["model"]["top1"] <= 100
    ck = train.load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ck["mode"] == "retrain" and Arch.from_dict(ck["arch"]) == arch
    vit = vitas.ViT(arch, SearchSpace(**ck["space"]))
    vit.load_state_dict(ck["model"])


@pytest.mark.parametrize("setup, argv, words", [
    (None, ["--data", "/nonexistent/imagenet"], ["train/", "missing"]),
    (None, ["--data", "cifar10", "--data-root", "/nonexistent"], ["cifar10", "--download"]),
    ("{not json", ["--arch", "ARCH"], ["not valid JSON"]),
    ('{"patch_size": 4, "embed_dim": 32}', ["--arch", "ARCH"], ["missing", "blocks"]),
    (json.dumps(Arch(4, 40, (None,) * 6).to_dict()), ["--arch", "ARCH"], ["embed_dim = 40", "[32, 48, 64]"]),
    ("CORRUPT", [], ["corrupt", "checkpoint"]),
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
