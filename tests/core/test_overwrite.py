"""run.overwrite moves the previous run aside (inside output_dir) and removes it only once the new run's first
checkpoint exists; the user's own files stay; a run that failed before finishing an iteration does not block the
rerun."""

import os

from genalign.cli import main
from genalign.core.checkpoint import PREVIOUS, previous_run_state

from .helpers import tiny_config, write_config

RAISES = "tests.core.rewards_for_tests:Raises"


def cfg(tiny_sd3, tmp_path, name, out, reward="tests.core.rewards_for_tests:MeanBrightness"):
    c = tiny_config(tiny_sd3, str(out), train__iterations=1)
    c["rewards"] = [{"name": reward}]
    return write_config(tmp_path / f"{name}.yaml", c)


def asides(out):
    return sorted(n for n in os.listdir(out) if n.startswith(PREVIOUS))


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tiny_sd3, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", cfg(tiny_sd3, tmp_path, "good", out)]) == 0
    old_summary = (out / "summary.json").read_bytes()
    old_lora = (out / "checkpoints" / "checkpoint-1" / "pytorch_lora_weights.safetensors").read_bytes()
    (out / "notes.txt").write_text("mine")
    # the new run crashes before its first iteration (its reward raises at the first evaluation)
    assert main(["train", cfg(tiny_sd3, tmp_path, "bad", out, RAISES), "run.overwrite=true"]) == 2
    assert "raised RuntimeError" in capsys.readouterr().err
    (aside,) = asides(out)
    assert (out / aside / "summary.json").read_bytes() == old_summary  # nothing lost ...
    assert (out / aside / "checkpoints" / "checkpoint-1" / "pytorch_lora_weights.safetensors").read_bytes() == old_lora
    assert not (out / "summary.json").exists()  # ... and no stale summary pointing at a missing checkpoint
    assert (out / "notes.txt").read_text() == "mine"
    # the rerun succeeds; once its checkpoint exists, the runs set aside are gone, the user's file stays
    assert main(["train", cfg(tiny_sd3, tmp_path, "good", out), "run.overwrite=true"]) == 0
    assert asides(out) == [] and (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists()


def test_a_run_that_failed_before_its_first_iteration_does_not_block_the_rerun(tiny_sd3, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", cfg(tiny_sd3, tmp_path, "bad", out, RAISES)]) == 2
    capsys.readouterr()
    assert (out / "config.yaml").exists() and previous_run_state(str(out)) == "unstarted"
    assert main(["train", cfg(tiny_sd3, tmp_path, "good", out)]) == 0  # no run.overwrite needed
    assert previous_run_state(str(out)) == "run" and asides(out) == []
    (out / "mine.txt").write_text("x")
    assert main(["train", cfg(tiny_sd3, tmp_path, "good", out)]) == 2  # a real run is never written over
    assert "is not empty" in capsys.readouterr().err


def test_two_runs_set_aside_within_one_second_get_distinct_folders(tmp_path):
    """One process overwriting twice within the same second (as the test above can) must not collide."""
    from genalign.core.checkpoint import drop_previous_runs, set_aside_previous_run

    out = tmp_path / "run"
    out.mkdir()
    firsts = []
    for k in range(2):
        (out / "summary.json").write_text(f"run {k}")
        (out / "checkpoints").mkdir()
        firsts.append(set_aside_previous_run(str(out)))
    assert len(set(firsts)) == 2 and len(asides(out)) == 2
    assert sorted((out / a / "summary.json").read_text() for a in asides(out)) == ["run 0", "run 1"]
    drop_previous_runs(str(out))
    assert asides(out) == []
