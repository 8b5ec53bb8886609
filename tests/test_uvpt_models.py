"""Uni-UVPT networks: deformable attention, the released MiT / torchvision Swin key layouts,
the adapter's parameter count, checkpoints."""
import math

import pytest
import torch

from segcore.models.deformable_attention import MSDeformAttn, ms_deform_attn, reference_points
from segcore.models.mit import MIT_SPECS, MixTransformer, load_mit_weights
from segcore.models.prompt_adapter import ADAPTER_SPECS, adapter_param_count
from segcore.models.swin import SWIN_SPECS, SwinEncoder, load_swin_weights
from segcore.models.uvpt import build_uvpt, parameter_counts, set_backbone_frozen


# ------------------------------------------------------------------ deformable attention
def _bilinear(v, x, y):
    """v (d, H, W); sample at pixel coordinates (x, y), pixel centres at integers, zeros outside."""
    d, h, w = v.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(d, dtype=v.dtype)
    for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        if 0 <= yy < h and 0 <= xx < w:
            out += (1 - abs(x - xx)) * (1 - abs(y - yy)) * v[:, yy, xx]
    return out


def test_deformable_attention_matches_a_bilinear_sampling_loop():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 5), (2, 3)]
    b, q, heads, d, points = 2, 4, 2, 3, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, d, generator=g, dtype=torch.float64)
    # locations past the border too (zero padding must count)
    loc = torch.rand(b, q, heads, len(shapes), points, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(b, q, heads, len(shapes), points, generator=g, dtype=torch.float64)
    got = ms_deform_attn(value, shapes, loc, weights)
    want = torch.zeros(b, q, heads * d, dtype=torch.float64)
    starts = [0, shapes[0][0] * shapes[0][1]]
    for n in range(b):
        for i in range(q):
            for m in range(heads):
                acc = torch.zeros(d, dtype=torch.float64)
                for lvl, (h, w) in enumerate(shapes):
                    v = value[n, starts[lvl]:starts[lvl] + h * w, m].T.reshape(d, h, w)
                    for p in range(points):
                        x, y = loc[n, i, m, lvl, p].tolist()
                        acc += weights[n, i, m, lvl, p] * _bilinear(v, x * w - 0.5, y * h - 0.5)
                want[n, i, m * d:(m + 1) * d] = acc
    assert torch.allclose(got, want, atol=1e-10)


def test_deformable_attention_module_starts_on_a_circle_with_uniform_weights():
    attn = MSDeformAttn(16, levels=3, heads=4, points=2, ratio=0.5)
    offsets = attn.sampling_offsets.bias.view(4, 3, 2, 2)
    assert torch.allclose(offsets[1, 0, 1], torch.tensor([0.0, 2.0]), atol=1e-6)  # head 1 at 90 degrees, point 2
    x = torch.randn(1, 5, 16)
    refs = reference_points([(1, 5)])
    out = attn(x, refs, torch.randn(1, 4 * 4 + 2 * 2 + 1, 16), [(4, 4), (2, 2), (1, 1)])
    assert out.shape == (1, 5, 16)
    assert torch.allclose(reference_points([(2, 2)]), torch.tensor([[.25, .25], [.75, .25], [.25, .75], [.75, .75]]))


# ------------------------------------------------------------------ MiT, released key layout
def released_mit_keys(depths, sr_ratios):
    """The key list of SegFormer's released ImageNet ``mit_b*.pth``, from its naming rules."""
    keys = []
    for i, (depth, sr) in enumerate(zip(depths, sr_ratios), start=1):
        keys += [f"patch_embed{i}.proj.weight", f"patch_embed{i}.proj.bias",
                 f"patch_embed{i}.norm.weight", f"patch_embed{i}.norm.bias"]
        for j in range(depth):
            p = f"block{i}.{j}."
            names = ["norm1", "attn.q", "attn.kv", "attn.proj"] + (["attn.sr", "attn.norm"] if sr > 1 else [])
            names += ["norm2", "mlp.fc1", "mlp.dwconv.dwconv", "mlp.fc2"]
            keys += [p + n + s for n in names for s in (".weight", ".bias")]
        keys += [f"norm{i}.weight", f"norm{i}.bias"]
    return keys + ["head.weight", "head.bias"]


def test_mit_b5_has_the_released_key_layout():
    spec = MIT_SPECS["mit_b5"]
    keys = released_mit_keys(spec.depths, spec.sr_ratios)
    assert len(keys) == 4 * 6 + 20 * (3 + 6 + 40) + 16 * 3 + 2  # 20 keys per block with sr, 16 in stage 4
    with torch.device("meta"):  # shapes only: no 81 M parameters to allocate and initialise
        enc = MixTransformer(spec)
    sd = enc.state_dict()
    assert list(sd) == [k for k in keys if not k.startswith("head.")]
    assert sd["block3.39.attn.kv.weight"].shape == (640, 320)
    assert sd["block1.0.attn.sr.weight"].shape == (64, 64, 8, 8)
    assert sd["patch_embed1.proj.weight"].shape == (64, 3, 7, 7)
    assert sd["patch_embed2.proj.weight"].shape == (128, 64, 3, 3)
    assert sd["block4.2.mlp.dwconv.dwconv.weight"].shape == (2048, 1, 3, 3)
    assert sum(v.numel() for v in sd.values()) == pytest.approx(81.44e6, rel=0.01)  # MiT-B5 encoder: 81.4 M


def _released_file(spec, path, drop=None, head=True):
    g = torch.Generator().manual_seed(1)
    ref = MixTransformer(spec).state_dict()
    sd = {k: torch.randn(v.shape, generator=g) for k, v in ref.items() if k != drop}
    if head:
        sd |= {"head.weight": torch.randn(1000, spec.dims[3], generator=g), "head.bias": torch.zeros(1000)}
    torch.save(sd, path)
    return sd


def test_mit_importer_loads_the_released_layout_key_for_key(tmp_path):
    spec = MIT_SPECS["mit_small"]
    sd = _released_file(spec, tmp_path / "mit.pth")
    assert set(sd) == set(released_mit_keys(spec.depths, spec.sr_ratios))
    enc = MixTransformer(spec)
    loaded = load_mit_weights(enc, tmp_path / "mit.pth")
    assert len(loaded) == len(sd) - 2
    for k, v in enc.state_dict().items():
        assert torch.equal(v, sd[k]), k
    _released_file(spec, tmp_path / "bad.pth", drop="block2.0.attn.kv.weight")
    with pytest.raises(ValueError, match="bad.pth: lacks block2.0.attn.kv.weight"):
        load_mit_weights(MixTransformer(spec), tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="has shape"):
        load_mit_weights(MixTransformer(MIT_SPECS["mit_small"].__class__(dims=(16, 32, 64, 96), heads=(1, 2, 4, 8),
                                                                           depths=(1, 1, 1, 1))), tmp_path / "mit.pth")


def test_swin_importer_takes_torchvision_key_layout(tmp_path):
    from torchvision.models.swin_transformer import SwinTransformer

    spec = SWIN_SPECS["swin_small"]
    torch.manual_seed(3)
    tv = SwinTransformer(patch_size=[4, 4], embed_dim=spec.embed_dim, depths=list(spec.depths),
                         num_heads=list(spec.heads), window_size=[spec.window] * 2)
    torch.save(tv.state_dict(), tmp_path / "swin.pth")
    enc = SwinEncoder(spec)
    loaded = load_swin_weights(enc, tmp_path / "swin.pth")
    tv_sd = tv.state_dict()
    assert sorted(loaded) == sorted(k for k in tv_sd if k.startswith("features."))
    for k in loaded:
        assert torch.equal(enc.state_dict()[k], tv_sd[k]), k
    # the encoder's stage-4 output equals torchvision's own features + final norm when out_norm[3] = norm
    enc.out_norm[3].load_state_dict(tv.norm.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = tv.eval().norm(tv.features(x)).permute(0, 3, 1, 2)
        assert torch.allclose(enc.eval()(x)[3], want, atol=1e-6)
    torch.save({k: v for k, v in tv_sd.items() if k != "features.3.1.mlp.0.weight"}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="lacks features.3.1.mlp.0.weight"):
        load_swin_weights(SwinEncoder(spec), tmp_path / "bad.pth")


# ------------------------------------------------------------------ adapted network
@pytest.mark.parametrize("backbone", ["mit_small", "swin_small"])
def test_adapted_network_counts_and_shapes(backbone):
    net = build_uvpt(backbone, 19, adapter=True)
    set_backbone_frozen(net)
    counts = parameter_counts(net)
    head = sum(p.numel() for p in net.head.parameters())
    assert counts["adapter_params"] == adapter_param_count(net.backbone.dims, ADAPTER_SPECS["small"])
    assert counts["trainable_params"] == counts["adapter_params"] + head + 3       # + the scale mixture
    assert counts["total_params"] == counts["trainable_params"] + counts["backbone_params"]
    out = net(torch.rand(2, 3, 64, 128))
    assert out["out"].shape == (2, 19, 16, 32)
    assert [tuple(p.shape[1:]) for p in out["prompts"]] == [(d, 16 // 2**i, 32 // 2**i) for i, d in
                                                            enumerate(net.backbone.dims)]


def test_official_adapter_count_matches_the_layer_shapes():
    """Swin-B / MiT-B5 adapters, analytic count (the official stem's unused fourth conv, 3x3
    256 -> 256 with BN, is not built: 590,336 parameters fewer than the official count)."""
    spec = ADAPTER_SPECS["official"]
    for dims, want in (((128, 256, 512, 1024), 24.67e6), ((64, 128, 320, 512), 8.59e6)):
        ours = adapter_param_count(dims, spec)
        assert ours + 256 * 256 * 9 + 2 * 256 == pytest.approx(want, rel=2e-3)
    from segcore.models.prompt_adapter import PromptAdapter
    assert sum(p.numel() for p in PromptAdapter((64, 128, 320, 512), spec).parameters()) == \
        adapter_param_count((64, 128, 320, 512), spec)


def test_checkpoint_round_trip_of_an_adapted_network(tmp_path):
    from segcore.models.checkpoint import load_model, save_model

    net = build_uvpt("mit_small", 16, adapter=True)
    save_model(tmp_path / "m.pt", net, {"arch": net.arch, "num_classes": 16, "bn_clr": False, "adapter": True})
    got, meta = load_model(tmp_path / "m.pt", expect_num_classes=16)
    assert got.has_adapter and meta["arch"] == "uvpt_mit_small"
    for k, v in net.state_dict().items():
        assert torch.equal(v, got.state_dict()[k])
    save_model(tmp_path / "bad.pt", net, {"arch": net.arch, "num_classes": 16, "bn_clr": False, "adapter": False})
    with pytest.raises(ValueError, match="bad.pt: architecture mismatch"):
        load_model(tmp_path / "bad.pt")
