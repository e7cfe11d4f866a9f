"""SF (slot filling): the synthetic Audio SNIPS set, our stand-in for s3prl's missing SNIPS dataset, the config.

The expected token strings are built here from the corpus's own word and tag lists, independently of the
recipe's tokenizer, so a wrong tag column, a lost slot boundary or a speaker leaking across splits fails.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lighthubert_s3prl.superb import corpus_snips, tasks
from lighthubert_s3prl.superb.corpus import make_corpus
from lighthubert_s3prl.upstream import recipe_patches
from lighthubert_s3prl.upstream.snips_dataset import SnipsDataset, read_transcripts


@pytest.fixture(scope="module")
def snips(tmp_path_factory) -> Path:
    manifest = make_corpus(tmp_path_factory.mktemp("sf_corpus"), preset="ci", seed=3, tasks="sf")
    return Path(manifest["tasks"]["sf"]["paths"]["path"])


def _tokenizer(slots_file: Path):
    from s3prl.downstream.ctc.text import load_text_encoder

    vocab = tasks.get_task("sf").config_dir / "character.txt"
    return load_text_encoder("character-slot", str(vocab), slots_file=str(slots_file))


def _bracketed(words, tags) -> str:
    """The recipe's target text, written out by hand: slot spans wrapped in 'B-<slot> ... E-<slot>'."""
    out, i = [], 0
    while i < len(words):
        if tags[i] == "O":
            out.append(words[i])
            i += 1
            continue
        j = i
        while j < len(words) and tags[j] == tags[i]:
            j += 1
        out.append(f"B-{tags[i]} " + " ".join(words[i:j]) + f" E-{tags[i]}")
        i = j
    return " ".join(out)


def test_fill_tags_every_word_of_a_slot_value():
    words, tags = corpus_snips.fill("ADD {artist} TO MY {playlist} PLAYLIST",
                                    {"artist": "ELTON JOHN", "playlist": "ROAD TRIP"})
    assert words == ["ADD", "ELTON", "JOHN", "TO", "MY", "ROAD", "TRIP", "PLAYLIST"]
    assert tags == ["O", "artist", "artist", "O", "O", "playlist", "playlist", "O"]
    assert corpus_snips.iob_line("Ivy-snips-train-0", words, tags, "AddToPlaylist") == (
        "Ivy-snips-train-0 BOS ADD ELTON JOHN TO MY ROAD TRIP PLAYLIST EOS\t"
        "O O artist artist O O playlist playlist O AddToPlaylist")


def test_corpus_layout_speakers_and_transcripts(snips):
    counts = {"train": 4, "valid": 2, "test": 2}  # the ci preset's talkers
    lines = read_transcripts(snips / "all.iob.snips.txt")
    for split, n in counts.items():
        files = sorted((snips / split).glob("*.wav"))
        talkers = {f.stem.split("-", 1)[0] for f in files}
        assert talkers == {name for name, _ in corpus_snips.SNIPS_SPEAKERS[split][:n]}
        assert all(re.fullmatch(rf"[A-Za-z]+-snips-{split}-\d+", f.stem) and f.stem in lines for f in files)
    assert len(lines) == sum(len(list((snips / s).glob("*.wav"))) for s in counts)
    slots = (snips / "slots.txt").read_text().split("\n")
    assert slots[0] == "O" and set(slots[1:]) - {""} == set(corpus_snips.SLOT_VALUES)
    for uid, text in lines.items():
        words, tags = (part.split() for part in text.split("\t"))
        assert words[0] == "BOS" and words[-1] == "EOS" and tags[0] == "O" and tags[-1] in corpus_snips.TEMPLATES
        for word, tag in zip(words[1:-1], tags[1:-1]):
            assert tag == "O" or word in " ".join(corpus_snips.SLOT_VALUES[tag]).split()


def test_dataset_filters_talkers_and_encodes_slots_as_the_recipe_decodes_them(snips):
    recipe_patches.apply()
    from s3prl.downstream.ctc.corpus.snips import SnipsDataset as Registered  # the PyPI package lacks it

    assert Registered is SnipsDataset
    tokenizer = _tokenizer(snips / "slots.txt")
    config = yaml.safe_load(tasks.get_task("sf").config_path.read_text())["downstream_expert"]["corpus"]
    dataset = SnipsDataset(["test"], tokenizer, 1, str(snips), **{k: config[k] for k in config if "speakers" in k})
    lines = read_transcripts(snips / "all.iob.snips.txt")
    assert sorted(Path(f).stem for f in dataset.file_list) == sorted(
        f.stem for f in (snips / "test").glob("*.wav"))
    lengths = [len(t) for t in dataset.text]
    assert lengths == sorted(lengths, reverse=True)  # longest first, as the recipe buckets them
    for path, tokens in zip(dataset.file_list, dataset.text):
        words, tags = (part.split()[1:-1] for part in lines[Path(path).stem].split("\t"))
        assert tokenizer.decode(tokens) == _bracketed(words, tags)
    # only the configured talkers: the other test talkers' files are left out
    one = SnipsDataset(["test"], tokenizer, 1, str(snips), test_speakers=["Brian"])
    assert {Path(f).stem.split("-")[0] for f in one.file_list} == {"Brian"}
    # buckets of similar length for training
    bucketed = SnipsDataset(["train"], tokenizer, 4, str(snips), train_speakers=config["train_speakers"])
    assert len(bucketed[0]) == 4 and len(bucketed[len(bucketed) - 1]) == 4


def test_dataset_errors_name_the_fix(snips, tmp_path):
    tokenizer = _tokenizer(snips / "slots.txt")
    with pytest.raises(ValueError, match="names no talkers"):
        SnipsDataset(["test"], tokenizer, 1, str(snips))
    with pytest.raises(FileNotFoundError, match="no .wav files of talkers"):
        SnipsDataset(["test"], tokenizer, 1, str(snips), test_speakers=["Nobody"])
    with pytest.raises(FileNotFoundError, match="corpus.path must be SUPERB's SNIPS folder"):
        SnipsDataset(["test"], tokenizer, 1, str(tmp_path), test_speakers=["Brian"])
    bad = tmp_path / "all.iob.snips.txt"
    bad.write_text("Brian-snips-test-0 BOS PLAY EOS\tO O O O PlayMusic\n")
    with pytest.raises(ValueError, match="3 words but 5 tags"):
        read_transcripts(bad)


def test_build_config_points_the_tokenizer_at_the_data_sets_slot_list(snips, tmp_path):
    path = tasks.build_config("sf", snips.parent, tmp_path / "sf.yaml", scale="ci")
    config = yaml.safe_load(path.read_text())["downstream_expert"]
    assert config["corpus"]["path"] == str(snips) and config["corpus"]["name"] == "snips"
    assert config["text"]["slots_file"] == str(snips / "slots.txt")
    assert config["text"]["vocab_file"] == str(tasks.get_task("sf").config_dir / "character.txt")
    # the real layout: a folder holding SNIPS/ is found; a folder without it is refused with the fix
    assert tasks.build_config("sf", snips, tmp_path / "sf2.yaml") == tmp_path / "sf2.yaml"
    (tmp_path / "empty").mkdir()
    with pytest.raises(tasks.TaskConfigError, match="Audio SNIPS"):
        tasks.build_config("sf", tmp_path / "empty", tmp_path / "sf3.yaml")


def test_the_printed_f1_and_cer_are_both_read():
    spec = tasks.get_task("sf")
    text = "test loss: 3.2\ntest slot_type_f1: 0.625\ntest slot_value_cer: 0.41\ntest wer: 0.9\n"
    assert spec.parse_result(text) == 0.625
    assert spec.parse_extra_results(text) == {"slot_value_cer": 0.41}
    assert spec.parse_extra_results("test slot_type_f1: 0.5\n") == {"slot_value_cer": None}
