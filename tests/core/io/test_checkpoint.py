import pytest
import torch

from dinocell_core.io.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_state,
    load_tensors,
    save_state,
)


def _state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optim": opt.state_dict(), "step": 7,
            "bf16": torch.ones(2, dtype=torch.bfloat16), "scalar": torch.tensor(3.0), "extra": (1, None, "x")}


def test_nested_state_round_trip(tmp_path):
    state = _state()
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["step"] == 7 and back["extra"] == (1, None, "x")
    assert set(back["optim"]["state"]) == {0, 1}  # int keys survive
    assert torch.equal(back["optim"]["state"][0]["exp_avg"], state["optim"]["state"][0]["exp_avg"])
    assert back["bf16"].dtype == torch.bfloat16 and back["scalar"].item() == 3.0
    opt = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters())
    opt.load_state_dict(back["optim"])


def test_corrupted_truncated_and_pickled_files_are_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    save_state(path, _state())
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "flip.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_state(tmp_path / "flip.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_state(tmp_path / "cut.safetensors")
    torch.save({"a": torch.zeros(1)}, tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match="pickle"):
        load_tensors(tmp_path / "p.pth")


def test_manager_keeps_last_and_periodic_and_skips_broken(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=2, keep_every=10)
    for step in (5, 10, 15, 20, 25):
        mgr.save(step, {"step": step, "w": torch.full((2,), float(step))})
    assert mgr.steps() == [10, 20, 25]
    mgr.path_for(25).write_bytes(b"garbage")
    assert mgr.latest() == mgr.path_for(20)
    assert mgr.load_latest()["step"] == 20
