"""Loading official ECG-JEPA checkpoints: a checkpoint written with the published layout (names, shapes, the
MAE-style 2D sin-cos table) is loaded by path and reproduces a forward pass written here from the description."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qoqmed.modeling.ecg_encoder import (
    ECGCheckpointError, ECGEncoderConfig, ECGJEPAEncoder, load_ecg_jepa_checkpoint,
)

D, DEPTH, HEADS, LEADS, PATCHES, PATCH = 32, 2, 2, 8, 50, 50


def _official_pos_embed(dim, grid_h, grid_w):
    """The release's table: meshgrid with the width (time) axis first, first half of channels from it."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid = np.stack(np.meshgrid(np.arange(grid_w, dtype=float), np.arange(grid_h, dtype=float)), axis=0)
    grid = grid.reshape(2, 1, grid_h, grid_w)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def _official_state(seed=0):
    """``checkpoint['encoder']`` of the published MaskTransformer (pos_type='sincos'), random values."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    sd = {"pos_embed": torch.from_numpy(_official_pos_embed(D, LEADS, PATCHES)).float(),
          "W_P.weight": r(D, PATCH), "W_P.bias": r(D), "norm.weight": 1 + r(D), "norm.bias": r(D)}
    for i in range(DEPTH):
        b = f"encoder_blocks.blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(D), b + "norm1.bias": r(D), b + "attn.qkv.weight": r(3 * D, D),
                   b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
                   b + "norm2.weight": 1 + r(D), b + "norm2.bias": r(D),
                   b + "mlp.fc1.weight": r(4 * D, D), b + "mlp.fc1.bias": r(4 * D),
                   b + "mlp.fc2.weight": r(D, 4 * D), b + "mlp.fc2.bias": r(D)})
    return sd


def _reference_representation(sd, x):
    """ECG-JEPA ``representation``: W_P, (x + pos) before each block, masked softmax attention, norm, mean."""
    bs = x.shape[0]
    x = x.reshape(bs, LEADS * PATCHES, PATCH) @ sd["W_P.weight"].T + sd["W_P.bias"]
    idx = torch.arange(LEADS * PATCHES)
    allowed = (idx[:, None] // PATCHES == idx[None] // PATCHES) | (idx[:, None] % PATCHES == idx[None] % PATCHES)
    for i in range(DEPTH):
        b = f"encoder_blocks.blocks.{i}."
        x = x + sd["pos_embed"]
        h = F.layer_norm(x, (D,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-5)
        q, k, v = (h @ sd[b + "attn.qkv.weight"].T).reshape(bs, -1, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // HEADS)
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        h = (att @ v).transpose(1, 2).reshape(bs, -1, D) @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        x = x + h
        h = F.layer_norm(x, (D,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-5)
        h = F.gelu(h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        x = x + h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
    x = F.layer_norm(x, (D,), sd["norm.weight"], sd["norm.bias"], eps=1e-5)
    return x.mean(1)


def _encoder():
    return ECGJEPAEncoder(ECGEncoderConfig(hidden_size=D, num_layers=DEPTH, num_heads=HEADS)).eval()


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "multiblock_epoch100.pth"
    torch.save({"encoder": _official_state(), "predictor": {"w": torch.zeros(1)}, "epoch": 100}, path)
    return path


def test_official_checkpoint_loads_and_matches_reference_forward(ckpt):
    enc = load_ecg_jepa_checkpoint(_encoder(), ckpt)
    sd = _official_state()
    assert torch.equal(enc.patch_embed.weight, sd["W_P.weight"])
    assert torch.equal(enc.blocks[1].mlp.fc2.weight, sd["encoder_blocks.blocks.1.mlp.fc2.weight"])
    x = torch.randn(2, LEADS, PATCHES * PATCH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = enc.tokens(x, "pooled")[:, 0]
    # tight enough to notice a LayerNorm eps of 1e-6 instead of the release's 1e-5 (differences ~5e-6)
    torch.testing.assert_close(ours, _reference_representation(sd, x), atol=1e-6, rtol=0)


def test_position_table_matches_the_release():
    enc = _encoder()
    official = torch.from_numpy(_official_pos_embed(D, LEADS, PATCHES)).float()
    torch.testing.assert_close(enc.pos_embed, official, atol=1e-6, rtol=0)


def test_corrupted_checkpoint_lists_every_problem_and_loads_nothing(tmp_path):
    sd = _official_state()
    del sd["encoder_blocks.blocks.1.norm2.bias"]
    sd["encoder_blocks.blocks.0.attn.qkv.bias"] = torch.zeros(3 * D)
    sd["W_P.weight"] = torch.zeros(D, 25)
    sd["norm.weight"] = torch.full((D,), float("nan"))
    path = tmp_path / "bad.pth"
    torch.save({"encoder": sd}, path)
    enc = _encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(ECGCheckpointError) as err:
        load_ecg_jepa_checkpoint(enc, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1)" in msg and "encoder_blocks.blocks.1.norm2.bias" in msg
    assert "unexpected keys (1)" in msg and "encoder_blocks.blocks.0.attn.qkv.bias" in msg
    assert "W_P.weight: checkpoint (32, 25), encoder (32, 50)" in msg
    assert "norm.weight: contains NaN" in msg
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_wrong_depth_and_learnable_positions_are_refused(tmp_path):
    path = tmp_path / "deep.pth"
    torch.save({"encoder": _official_state()}, path)
    shallow = ECGJEPAEncoder(ECGEncoderConfig(hidden_size=D, num_layers=1, num_heads=HEADS))
    with pytest.raises(ECGCheckpointError, match=r"unexpected keys \(11\)"):
        load_ecg_jepa_checkpoint(shallow, path)
    sd = _official_state()
    sd["pos_embed"] = torch.rand(LEADS * PATCHES, D) * 0.04 - 0.02
    torch.save({"encoder": sd}, path)
    with pytest.raises(ECGCheckpointError, match="learnable or rotary positions"):
        load_ecg_jepa_checkpoint(_encoder(), path)
    del sd["pos_embed"]
    torch.save({"encoder": sd}, path)
    with pytest.raises(ECGCheckpointError, match="missing keys.*\n.*pos_embed"):
        load_ecg_jepa_checkpoint(_encoder(), path)


def test_unreadable_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_ecg_jepa_checkpoint(_encoder(), tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ECGCheckpointError, match="junk.pth: cannot be read"):
        load_ecg_jepa_checkpoint(_encoder(), junk)
    other = tmp_path / "other.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, other)
    with pytest.raises(ECGCheckpointError, match=r"no 'encoder' state dict .*\['model', 'step'\]"):
        load_ecg_jepa_checkpoint(_encoder(), other)


def test_native_names_and_ddp_prefix_are_accepted(tmp_path):
    src = load_ecg_jepa_checkpoint(_encoder(), _save(tmp_path, {"encoder": _official_state()}))
    native = {f"module.{k}": v for k, v in src.state_dict().items()}
    enc = load_ecg_jepa_checkpoint(_encoder(), _save(tmp_path, {"encoder": native}))
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), src.state_dict().values()))


def _save(tmp_path, obj):
    path = tmp_path / f"ckpt{len(list(tmp_path.iterdir()))}.pt"
    torch.save(obj, path)
    return path
