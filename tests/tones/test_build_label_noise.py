"""scripts/build_tones_pipeline.py --phases: the caption noise moves the root by a tritone and nothing else, never
moves a caption across the train / held-out split, hits the asked fraction, is seeded; bad phases are refused."""

import os
import sys

import pytest

from tests.core.helpers import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))


def test_tritone_captions_keep_the_split_and_the_fraction():
    from build_tones_pipeline import noisy_captions

    from genalign.tones.data import all_labels, parse_prompt

    labels = all_labels() * 10  # every combination, 4320 clips
    caps = noisy_captions(labels, 0.4, 7)
    assert caps == noisy_captions(labels, 0.4, 7)  # seeded
    assert noisy_captions(labels, 0.0, 7) == [lab.caption for lab in labels]
    changed = [(c, lab) for c, lab in zip(caps, labels) if c != lab.caption]
    assert 0.37 < len(changed) / len(labels) < 0.43
    train_caps = {lab.caption for lab in labels if lab.split == "train"}
    for c, lab in changed:
        p, q = parse_prompt(c), parse_prompt(lab.caption)
        assert [(m - n) % 12 for m, n in zip(p.midi_notes, q.midi_notes)] == [6] * len(q.midi_notes)
        assert (c in train_caps) == (lab.split == "train")  # a held-out caption never labels a training clip


@pytest.mark.parametrize("bad", ["2000:1e-3", "x:1e-3:0", "2000:0:0", "2000:1e-3:1.0", "2000:1e-3:0:1", "2000:1e-3:0:0.3:1"])
def test_bad_phases_are_refused_in_one_line(bad):
    from build_tones_pipeline import parse_phases

    with pytest.raises(SystemExit, match="--phases"):
        parse_phases(bad)
    assert parse_phases("2250:2e-3:0, 1500:1e-3:0.4:0.3") == [(2250, 2e-3, 0.0, 0.0), (1500, 1e-3, 0.4, 0.3)]


def test_attribute_drop_leaves_out_timbre_and_articulation_independently_and_nothing_else():
    from build_tones_pipeline import noisy_captions

    from genalign.tones.data import all_labels, parse_prompt

    labels = all_labels() * 10
    assert noisy_captions(labels, 0.4, 7, 0.0) == noisy_captions(labels, 0.4, 7)  # drop 0: the earlier captions
    caps = noisy_captions(labels, 0.0, 7, 0.3)
    no_timbre = [parse_prompt(c).timbre is None for c in caps]
    no_art = [parse_prompt(c).articulation is None for c in caps]
    n = len(labels)
    assert 0.27 < sum(no_timbre) / n < 0.33 and 0.27 < sum(no_art) / n < 0.33
    both = sum(a and b for a, b in zip(no_timbre, no_art)) / n
    assert 0.07 < both < 0.11  # independent: 0.3 * 0.3
    for c, lab in zip(caps, labels):  # the notes and the attributes still said are the clip's own
        p = parse_prompt(c)
        assert p.midi_notes == lab.midi_notes
        assert p.timbre in (None, lab.timbre) and p.articulation in (None, lab.articulation)
    flipped = noisy_captions(labels, 0.4, 7, 0.3)  # the tritone flips are the same clips with or without the drop
    base = noisy_captions(labels, 0.4, 7)
    assert [parse_prompt(a).midi_notes for a in flipped] == [parse_prompt(b).midi_notes for b in base]


def test_init_loads_the_trained_parts_and_refuses_a_foreign_t5_or_a_non_pipeline(tmp_path):
    import torch
    from build_tones_pipeline import load_init

    from genalign.tones.pipeline import make_pipeline

    src = make_pipeline(str(tmp_path / "tok0"), seed=0, num_layers=1)
    with torch.no_grad():
        for p in list(src.transformer.parameters()) + list(src.projection_model.parameters()):
            p.add_(0.5)  # "trained" weights, different from a fresh build's
    src.save_pretrained(str(tmp_path / "src"), safe_serialization=True)
    dst = make_pipeline(str(tmp_path / "tok1"), seed=0, num_layers=1)
    load_init(dst, str(tmp_path / "src"))
    for a, b in [(src.transformer, dst.transformer), (src.projection_model, dst.projection_model)]:
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), k
    with pytest.raises(SystemExit, match="frozen T5 differs"):
        load_init(make_pipeline(str(tmp_path / "tok2"), seed=1, num_layers=1), str(tmp_path / "src"))
    with pytest.raises(SystemExit, match="not a tones pipeline folder"):
        load_init(dst, str(tmp_path))
