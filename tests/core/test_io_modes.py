"""Files and directories genalign writes get the user's umask, like any other tool's (not mkstemp's 0600)."""

import os
import stat

import pytest

from genalign.io import atomic_directory, atomic_write_json, atomic_write_text, current_umask


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask,fmode,dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, fmode, dmode):
    umask(mask)
    assert current_umask() == mask
    f = tmp_path / "a" / "config.yaml"
    atomic_write_text(str(f), "x: 1\n")
    assert _mode(f) == fmode
    assert _mode(tmp_path / "a") == dmode  # os.makedirs follows the umask too
    atomic_write_json(str(f), {"x": 2})  # replacing keeps the umask mode, not 0600
    assert _mode(f) == fmode
    plain = tmp_path / "plain.txt"  # what open() gives, for comparison
    plain.write_text("p")
    assert _mode(plain) == fmode
    with atomic_directory(str(tmp_path / "ckpt")) as tmp:
        atomic_write_text(os.path.join(tmp, "w.txt"), "w")
    assert _mode(tmp_path / "ckpt") == dmode
    assert _mode(tmp_path / "ckpt" / "w.txt") == fmode
    with atomic_directory(str(tmp_path / "ckpt")) as tmp:  # replacing an existing directory
        atomic_write_text(os.path.join(tmp, "w.txt"), "v")
    assert _mode(tmp_path / "ckpt") == dmode and (tmp_path / "ckpt" / "w.txt").read_text() == "v"
    assert sorted(os.listdir(tmp_path)) == ["a", "ckpt", "plain.txt"]  # no temporary litter


def test_umask_modes_opens_owner_only_files_like_safetensors_writes(tmp_path, umask):
    from safetensors.torch import save_file
    import torch

    from genalign.io import umask_modes

    umask(0o022)
    d = tmp_path / "ck"
    (d / "parts").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(d / "parts" / "p.safetensors"))
    os.chmod(d / "parts" / "p.safetensors", 0o600)  # what safetensors' atomic writer leaves
    os.chmod(d / "parts", 0o700)
    umask_modes(str(d))
    assert _mode(d / "parts" / "p.safetensors") == 0o644 and _mode(d / "parts") == 0o755
