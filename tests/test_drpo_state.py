"""The DRPO state in checkpoints: stored and read without pickle, restoring the estimator exactly; states written by
earlier versions still load when they hold plain arrays, and a file carrying a code payload is refused unrun."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from qoqmed.algos.drpo import DRPO
from qoqmed.data.errors import DataError
from qoqmed.train.drpo_state import read_drpo_state, write_drpo_state


def _batches(n_steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for step in range(n_steps):
        qids = [f"q{step}-{i}" for i in range(6) for _ in range(4)]
        domains = [("ecg", "ct", "xray")[i % 3] for i in range(6) for _ in range(4)]
        yield torch.tensor(rng.integers(0, 2, 24).astype(float) * rng.random(24)), qids, domains


class _Payload:
    """Creates ``marker`` when unpickled: stands for any code a shared checkpoint could carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("options", [dict(mode="paper"), dict(mode="bounded", history=5),
                                     dict(mode="reference")])
def test_written_state_restores_an_estimator_that_continues_identically(tmp_path, options):
    batches = list(_batches(5))
    full, first = DRPO(4, seed=3, **options), DRPO(4, seed=3, **options)
    for rewards, qids, domains in batches[:3]:
        full(rewards, qids, domains)
        first(rewards, qids, domains)
    write_drpo_state(first.state_dict(), tmp_path / "drpo_state.npz")
    resumed = DRPO(4, seed=3, **options)
    resumed.load_state_dict(read_drpo_state(tmp_path / "drpo_state.npz"))
    for rewards, qids, domains in batches[3:]:
        assert torch.equal(full(rewards, qids, domains), resumed(rewards, qids, domains))
    a, b = full.state_dict(), resumed.state_dict()
    assert a["seen"] == b["seen"] and a["domains"].keys() == b["domains"].keys()
    for d in a["domains"]:
        assert a["domains"][d].dtype == b["domains"][d].dtype
        np.testing.assert_array_equal(a["domains"][d], b["domains"][d])


def test_state_file_holds_no_pickled_objects(tmp_path):
    drpo = DRPO(4, mode="bounded", history=5)
    for batch in _batches(2):
        drpo(*batch)
    write_drpo_state(drpo.state_dict(), tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as archive:  # would raise on any object array
        assert all(archive[k].dtype != object for k in archive.files)
        assert {"meta", "domains/0", "centres/0"} <= set(archive.files)


def test_non_string_domain_names_keep_their_type(tmp_path):
    drpo = DRPO(2, mode="bounded", history=4)
    drpo(torch.tensor([0.0, 1.0, 1.0, 1.0]), ["a", "a", "b", "b"], [7, 7, 9, 9])
    write_drpo_state(drpo.state_dict(), tmp_path / "s.npz")
    state = read_drpo_state(tmp_path / "s.npz")
    assert set(state["domains"]) == {7, 9} and state["seen"] == {7: 1, 9: 1}


def test_legacy_state_of_plain_arrays_still_loads(tmp_path):
    drpo = DRPO(4, mode="reference")
    for batch in _batches(2):
        drpo(*batch)
    torch.save(drpo.state_dict(), tmp_path / "drpo_state.pt")  # how earlier versions wrote it
    state = read_drpo_state(tmp_path / "drpo_state.pt")
    restored = DRPO(4, mode="reference")
    restored.load_state_dict(state)
    batch = next(_batches(1, seed=9))
    assert torch.equal(drpo(*batch), restored(*batch))


def test_legacy_state_with_a_code_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload-ran"
    state = DRPO(2).state_dict() | {"extra": _Payload(marker)}
    torch.save(state, tmp_path / "drpo_state.pt")
    with pytest.raises(DataError) as err:
        read_drpo_state(tmp_path / "drpo_state.pt")
    assert not marker.exists()
    message = str(err.value)
    assert "drpo_state.pt" in message and "could run code" in message and "\n" not in message
    assert "weights_only=False" not in message and "\x1b" not in message  # no advice to unpickle, no ANSI codes
    # the payload is real: full unpickling (what the trainer used to do) runs it
    torch.load(tmp_path / "drpo_state.pt", weights_only=False)
    assert marker.exists()


def test_npz_state_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload-ran"
    good = tmp_path / "good.npz"
    write_drpo_state(DRPO(2).state_dict(), good)
    evil = tmp_path / "drpo_state.npz"
    payload = io.BytesIO()
    np.save(payload, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        dst.writestr("domains/0.npy", payload.getvalue())
    with pytest.raises(DataError, match="drpo_state.npz: not a readable DRPO state"):
        read_drpo_state(evil)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_damaged_state_file_gives_a_named_error(tmp_path, content):
    path = tmp_path / "drpo_state.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="drpo_state.npz: not a readable DRPO state"):
        read_drpo_state(path)


def test_no_module_unpickles_without_restriction():
    """Every torch.load in the package restricts unpickling; no pickle.load(s) or yaml.load anywhere."""
    import ast
    from pathlib import Path

    import qoqmed

    for path in Path(qoqmed.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            name = f"{owner}.{node.func.attr}"
            assert name not in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load"), (path, name)
            keywords = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                assert "weights_only" in keywords, (path, node.lineno)
                value = keywords["weights_only"]
                assert not (isinstance(value, ast.Constant) and value.value is False), (path, node.lineno)
            if name == "np.load":
                value = keywords.get("allow_pickle")
                assert isinstance(value, ast.Constant) and value.value is False, (path, node.lineno)
