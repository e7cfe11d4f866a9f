"""Training building blocks: config schema and errors, masking, frame alignment, losses, data, teachers, search."""
from __future__ import annotations


import pytest
import torch

from lighthubert_s3prl.model.config import SEARCH_SPACES, ConfigError, ModelConfig, SubnetConfig, count_parameters
from lighthubert_s3prl.training.config import apply_override, load_config, parse_layer_spec, resolve_space
from lighthubert_s3prl.training.data import (
    AudioCropDataset,
    ResumableBatchSampler,
    collate,
    list_audio_files,
    synthetic_utterance,
    write_wav,
)
from lighthubert_s3prl.training.losses import distill_loss, masked_instance_norm, resolve_layers
from lighthubert_s3prl.training.masking import sample_span_mask, step_generator
from lighthubert_s3prl.training.search import Budget, search, subnet_macs
from lighthubert_s3prl.training.teachers import align_frames

from .test_training_fixtures import TINY_SPACE, teacher_ckpt  # noqa: F401 (fixture)


def _minimal(**extra):
    base = {"data": {"train": "synthetic"}, "teacher": {"name": "fbank"},
            "target": {"source": "hidden_states", "layers": -1}}
    base.update(extra)
    return base


# ---------------------------------------------------------------------------------------------------
# configuration
def test_config_defaults_follow_the_paper():
    cfg = load_config(_minimal(), stage="stage1")
    assert (cfg.mask.prob, cfg.mask.length, cfg.loss.type) == (0.65, 10, "l1")
    # no target section at all: data2vec's per-layer instance norm of the last 8 FFN outputs
    bare = load_config({"data": {"train": "synthetic"}, "teacher": {"ckpt": "t.pt"}}, stage="stage1").target
    assert (bare.source, bare.layers, bare.per_layer_norm, bare.final_norm) == ("layer_results", "last:8", "instance", "none")
    assert load_config({"data": {"train": "synthetic"}, "teacher": "fbank"}, stage="stage1").target.layers == "last:8"
    ekd = load_config({"data": {"train": "synthetic"}, "teachers": [{"name": "fbank", "layers": [0]}]}, stage="ekd")
    assert ekd.loss.type == "l1_cos" and not ekd.mask.enabled and ekd.loss.frames == "all"


def test_overrides_are_parsed_as_yaml():
    data = {"train": {"steps": 5}, "teachers": [{"name": "a"}]}
    apply_override(data, "train.steps=7")
    apply_override(data, "optim.lr=1e-4")
    apply_override(data, "teachers.0.layers=[4, 8]")
    apply_override(data, "teachers.1.name=b")
    assert data["train"]["steps"] == 7 and float(data["optim"]["lr"]) == 1e-4  # YAML 1.1 keeps "1e-4" a string; the schema converts it
    assert data["teachers"] == [{"name": "a", "layers": [4, 8]}, {"name": "b"}]
    cfg = load_config(_minimal(), ["optim.lr=3e-4", "train.steps=12"], "stage1")
    assert cfg.optim.lr == 3e-4 and cfg.train.steps == 12


@pytest.mark.parametrize("override,message", [
    ("train.stepz=3", "unknown config key 'train.stepz'; did you mean 'train.steps'?"),
    ("optimz.lr=3", "unknown config key 'optimz'; did you mean 'optim'?"),
    ("train.steps=abc", "train.steps must be an integer, got 'abc'"),
    ("train.amp=fp8", "train.amp='fp8' is not allowed; allowed values: ['none', 'bf16', 'fp16']"),
    ("loss.type=l3", "loss.type='l3' is not allowed"),
    ("target.layers=first:3", "is not a layer spec; use 'last:N'"),
    ("mask.enabled=false", "loss.frames=masked needs input masking"),
    ("data.train=null", "data.train is missing"),
    ("train.eval_every=5", "train.eval_every is set but data.valid is not"),
    ("student.type=distiller", "student.type='distiller' is only for stage 'ekd'"),
    ("data.min_seconds=5", "data.min_seconds=5.0 exceeds data.crop_seconds"),
    ("train.steps", "must look like key.sub=value"),
])
def test_bad_config_values_say_what_and_how(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(_minimal(), [override], "stage1")
    assert message in str(err.value)


def test_stage_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="stage2 initialises the supernet from a stage-1 checkpoint: set student.init"):
        load_config(_minimal(), stage="stage2")
    with pytest.raises(ConfigError, match="the command asks for 'stage2' but the config says stage: stage1"):
        load_config(_minimal(stage="stage1"), stage="stage2")
    with pytest.raises(ConfigError, match="no teacher"):
        load_config({"data": {"train": "synthetic"}}, stage="stage1")
    with pytest.raises(ConfigError, match="stage1 distils from exactly one teacher"):
        load_config({"data": {"train": "synthetic"}, "teachers": ["fbank", "mfcc"]}, stage="stage1")
    with pytest.raises(ConfigError, match=r"teachers.0.layers is missing: EKD needs the teacher layers"):
        load_config({"data": {"train": "synthetic"}, "teachers": ["fbank"]}, stage="ekd")
    with pytest.raises(ConfigError, match="every teachers.N.layers list needs the same length; use ekd.aggregation=separate"):
        load_config({"data": {"train": "synthetic"}, "teachers": [{"name": "a", "layers": [1, 2]},
                                                                   {"name": "b", "layers": [1]}]}, stage="ekd")
    with pytest.raises(ConfigError, match="training config .* does not exist"):
        load_config(tmp_path / "nope.yaml", stage="stage1")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad, stage="stage1")


def test_custom_search_space():
    space = resolve_space(TINY_SPACE)
    assert space.name == "tiny" and space.default == SubnetConfig.uniform(96, 2, 288, 12)
    assert space.max_subnet() == SubnetConfig.uniform(128, 2, 512, 12)
    assert resolve_space("small") is SEARCH_SPACES["small"]
    with pytest.raises(ConfigError, match="space.embed_dim must be a non-empty list"):
        resolve_space({**TINY_SPACE, "embed_dim": []})
    with pytest.raises(ConfigError, match="is not a member of the space"):
        resolve_space({**TINY_SPACE, "default": {"embed_dim": 80, "heads_num": 1, "ffn_ratio": 2.0, "layer_num": 12}})
    with pytest.raises(ConfigError, match="space='medium' is unknown"):
        resolve_space("medium")
    assert resolve_space(space.to_dict()) == space  # what checkpoints record round-trips


def test_layer_specs():
    assert parse_layer_spec("last:8", "k") == list(range(-8, 0))
    assert resolve_layers("last:8", 12, "layer_results", "k") == list(range(4, 12))
    assert resolve_layers([4, 8, 12], 13, "hidden_states", "k") == [4, 8, 12]
    with pytest.raises(ConfigError, match="asks for hidden_states index 12, but the teacher has 1 hidden_states"):
        resolve_layers([12], 1, "hidden_states", "teachers.0.layers")


# ---------------------------------------------------------------------------------------------------
# masking, alignment, losses
def test_span_mask_statistics_and_padding():
    lengths = torch.tensor([400, 250, 9, 1])
    mask = sample_span_mask(lengths, 400, 0.65, 10, 2, torch.Generator().manual_seed(0))
    assert mask.shape == (4, 400) and mask.dtype == torch.bool
    assert not mask[1, 250:].any() and not mask[2, 9:].any() and not mask[3].any()
    # overlapping spans: the masked share is below 0.65 but near HuBERT's ~0.5
    many = sample_span_mask(torch.full((64,), 500), 500, 0.65, 10, 2, torch.Generator().manual_seed(1))
    assert 0.4 < many.float().mean() < 0.6
    # runs of masked frames are at least one span long (except where cut by the end)
    row = many[0].int().tolist()
    runs, run = [], 0
    for v in row + [0]:
        if v:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert min(runs) >= 10
    again = sample_span_mask(lengths, 400, 0.65, 10, 2, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    assert step_generator(0, 1).initial_seed() != step_generator(0, 2).initial_seed()
    assert not sample_span_mask(lengths, 400, 0.0).any()


def test_align_frames():
    x = torch.arange(10.0).view(1, 10, 1)
    pooled = align_frames(x, 160, 320, 5)  # 10 ms teacher -> 20 ms student: neighbours averaged
    assert pooled.flatten().tolist() == [0.5, 2.5, 4.5, 6.5, 8.5]
    padded = align_frames(torch.ones(2, 3, 4), 320, 320, 5)
    assert padded.shape == (2, 5, 4) and torch.equal(padded[:, 3:], padded[:, 2:3].expand(-1, 2, -1))
    assert align_frames(torch.randn(1, 30, 2), 480, 320, 45).shape == (1, 45, 2)


def test_losses():
    pred, target = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    frames = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    loss, stats = distill_loss(pred, target, frames, "l1")
    assert torch.isclose(loss, (pred[frames] - target[frames]).abs().mean())
    loss, stats = distill_loss(pred, target, None, "l1_cos", 1.0)
    cos = torch.nn.functional.cosine_similarity(pred, target, dim=-1)
    expected = (pred - target).abs().mean() - torch.nn.functional.logsigmoid(cos).mean()
    assert torch.isclose(loss, expected) and "cos" in stats
    empty, _ = distill_loss(pred, target, torch.zeros(2, 5, dtype=torch.bool), "l1")
    assert float(empty) == 0.0
    # instance norm ignores padded frames: padding content does not change valid frames
    x = torch.randn(1, 6, 3)
    valid = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    y = x.clone()
    y[:, 4:] = 100.0
    assert torch.allclose(masked_instance_norm(x, valid)[:, :4], masked_instance_norm(y, valid)[:, :4])
    assert torch.allclose(masked_instance_norm(x, valid)[:, :4].mean(1), torch.zeros(1, 3), atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# data
def test_audio_folder_and_list(tmp_path):
    folder = tmp_path / "audio"
    for i in range(3):
        write_wav(folder / f"sub/u{i}.wav", synthetic_utterance(i, 1.0 + i))
    (folder / "notes.txt").write_text("not audio")
    files = list_audio_files(folder, [".wav", ".flac"])
    assert [f.name for f in files] == ["u0.wav", "u1.wav", "u2.wav"]
    listing = tmp_path / "train.lst"
    listing.write_text("# comment\naudio/sub/u1.wav\n" + str(files[2]) + "\n")
    assert [f.name for f in list_audio_files(listing, [".wav"])] == ["u1.wav", "u2.wav"]
    ds = AudioCropDataset(files, crop_seconds=1.5, min_seconds=1.2, seed=3)
    assert len(ds) == 2  # the 1 s file is below min_seconds
    a = ds[1]
    assert len(a) == 24000 and torch.equal(a, ds[1])  # crop offset fixed by (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1])


def test_data_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train='.*missing' does not exist; point it at a folder of .wav/.flac files"):
        list_audio_files(tmp_path / "missing", [".wav", ".flac"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no audio files with extensions"):
        list_audio_files(tmp_path / "empty", [".wav"])
    listing = tmp_path / "l.txt"
    listing.write_text("nowhere.wav\n")
    with pytest.raises(ConfigError, match="names 1 missing file"):
        list_audio_files(listing, [".wav"])
    with pytest.raises(ConfigError, match="one step needs data.batch_size=8 x 2 process"):
        ResumableBatchSampler(10, 8, world=2)


def test_held_out_batches_spread_over_the_speakers(tmp_path):
    """Validation and search score a shuffled set that takes every speaker in turn, not the first files in
    sorted order (one or two talkers of a LibriSpeech split)."""
    from lighthubert_s3prl.training.config import DataConfig
    from lighthubert_s3prl.training.data import build_dataset, fixed_batches, speaker_of

    root = tmp_path / "dev-clean"
    for spk in ("84", "174", "251", "422"):
        for utt in range(5):
            write_wav(root / spk / "7" / f"{spk}-7-{utt:04d}.wav", synthetic_utterance(int(spk) + utt, 0.2))
    cfg = DataConfig(train=str(root), crop_seconds=1.0, min_seconds=0.1)
    dataset = build_dataset(str(root), cfg, "data.valid", seed=0, valid=True)

    def chosen(seed: int):
        batches = fixed_batches(dataset, 2, 4, seed)
        waves = [w[:n] for b in batches for w, n in zip(b.wav, b.lengths.tolist())]
        return [next(i for i in range(len(dataset)) if torch.equal(dataset[i], w)) for w in waves]

    picked = chosen(0)
    speakers = [dataset.speaker(i) for i in picked]
    assert len(picked) == 8 and len(set(picked)) == 8
    assert sorted(speakers.count(s) for s in set(speakers)) == [2, 2, 2, 2]  # each speaker twice
    assert picked != list(range(8)) and chosen(0) == picked and chosen(1) != picked
    assert speaker_of(tmp_path / "wav" / "id10001" / "vid" / "00001.wav", tmp_path / "wav") == "id10001"
    assert speaker_of(tmp_path / "x" / "1272-128104-0000.flac", None) == "1272"
    assert speaker_of(tmp_path / "flat.wav", tmp_path) == str(tmp_path / "flat.wav")


def test_batch_sampler_shards_and_resumes():
    ranks = [list(ResumableBatchSampler(20, 3, seed=1, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    flat = [i for r in ranks for b in r for i in b]
    assert len(set(flat)) == len(flat) == 18  # disjoint across ranks
    full = list(ResumableBatchSampler(20, 3, seed=1))
    later = ResumableBatchSampler(20, 3, seed=1)
    later.set_position(0, 4)
    assert list(later) == full[4:]
    later.set_position(1, 0)
    assert list(later) != full


def test_collate_pads_and_masks():
    batch = collate([torch.ones(5), torch.ones(3)])
    assert batch.wav.shape == (2, 5) and batch.padding_mask[1].tolist() == [False] * 3 + [True] * 2
    assert [len(w) for w in batch.waveforms()] == [5, 3]


# ---------------------------------------------------------------------------------------------------
# teachers
def test_unknown_teacher_is_explained():
    from lighthubert_s3prl.training.config import TeacherConfig
    from lighthubert_s3prl.training.teachers import build_teacher

    with pytest.raises(ConfigError, match="unknown teacher 'hubert_bse': it is not an s3prl upstream name. Did you mean hubert_base"):
        build_teacher(TeacherConfig(name="hubert_bse"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="give 'name'"):
        TeacherConfig().validate("teacher")


def test_lighthubert_teacher_gives_ffn_outputs(teacher_ckpt):
    from lighthubert_s3prl.training.config import TeacherConfig
    from lighthubert_s3prl.training.teachers import build_teacher

    teacher = build_teacher(TeacherConfig(ckpt=str(teacher_ckpt)), torch.device("cpu"))
    assert (teacher.num_hidden_states, teacher.num_layer_results) == (13, 12)
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    out = teacher(collate([synthetic_utterance(0, 1.0), synthetic_utterance(1, 0.6)]))
    assert out.layer_results[0].shape == out.hidden_states[1].shape == (2, 49, 128)


def test_targets_keep_the_teachers_precision_under_the_students_autocast(tmp_path, teacher_ckpt):
    """train.amp=bf16 runs the student in autocast; the targets must still be the fp32 teacher's."""
    from lighthubert_s3prl.training.distill import build_task

    from .test_training_fixtures import tiny_config

    cfg = load_config(tiny_config("stage1", tmp_path, teacher_ckpt, train={"amp": "bf16"}))
    task = build_task(cfg, torch.device("cpu"))
    batch = collate([synthetic_utterance(0, 1.0), synthetic_utterance(1, 0.7)])
    plain = task.plan(batch, step=0)[0]["target"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = task.plan(batch, step=0)[0]["target"]
        rounded = task.teachers[0].run(batch).layer_results[-1]  # the model itself, not opting out
    assert under.dtype == torch.float32 and torch.equal(under, plain)
    exact = task.teachers[0](batch).layer_results[-1]
    assert (rounded.float() - exact).abs().max() > 1e-3, "autocast changes this teacher, so the check has teeth"


def test_a_teacher_runs_at_its_configured_dtype(teacher_ckpt):
    from lighthubert_s3prl.training.config import TeacherConfig
    from lighthubert_s3prl.training.teachers import build_teacher

    batch = collate([synthetic_utterance(0, 1.0)])
    fp32 = build_teacher(TeacherConfig(ckpt=str(teacher_ckpt)), torch.device("cpu"))(batch).layer_results[-1]
    teacher = build_teacher(TeacherConfig(ckpt=str(teacher_ckpt), dtype="bfloat16"), torch.device("cpu"))
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    half = teacher(batch).layer_results[-1]
    assert half.dtype == torch.float32, "targets are handed on in fp32 whatever the teacher computes in"
    err = (half - fp32).abs().max() / fp32.abs().max()
    assert 1e-4 < err < 0.1, err  # bf16 rounding: visible, yet the same features
    with pytest.raises(ConfigError, match="dtype float16 needs a CUDA device"):
        build_teacher(TeacherConfig(ckpt=str(teacher_ckpt), dtype="float16"), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"teacher.dtype='fp8' is not allowed"):
        TeacherConfig(ckpt="x", dtype="fp8").validate("teacher")


def test_s3prl_hubert_teacher_ffn_outputs_by_hooks(tmp_path):
    """s3prl's own HuBERT code (hubert_local on a tiny converted checkpoint): FFN outputs caught by fc2 hooks."""
    from lighthubert_s3prl.training.config import TeacherConfig
    from lighthubert_s3prl.training.teachers import build_teacher

    from .test_training_fixtures import write_tiny_hubert

    ckpt = write_tiny_hubert(tmp_path / "tiny_hubert.pt", layers=3)
    teacher = build_teacher(TeacherConfig(name="hubert_local", ckpt=str(ckpt)), torch.device("cpu"))
    assert (teacher.num_hidden_states, teacher.num_layer_results, teacher.downsample_rate) == (4, 3, 320)
    long, short = synthetic_utterance(0, 1.0), synthetic_utterance(1, 0.5)
    both = teacher(collate([long, short]))
    alone = teacher(collate([long]))
    assert both.layer_results[2].shape == (2, 49, 64)
    # batch-first orientation: the first utterance's FFN outputs do not depend on its batch neighbour
    assert torch.allclose(both.layer_results[2][0], alone.layer_results[2][0], atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# search (with a synthetic score; the real proxy is exercised in test_training_runs.py)
def test_budget_too_small_is_explained():
    space = resolve_space(TINY_SPACE)
    from lighthubert_s3prl.model.checkpoint import tiny_model_config

    budget = Budget("params", 1000, tiny_model_config())
    with pytest.raises(ConfigError, match=r"budget too small: the smallest subnet of space 'tiny' .* raise --max-params to at least"):
        budget.check(space)
    with pytest.raises(ConfigError, match="raise --max-macs to at least"):
        Budget("macs", 10, tiny_model_config()).check(space)


def test_mac_count_grows_with_the_subnet():
    small, base = SEARCH_SPACES["small"], SEARCH_SPACES["base"]
    m = ModelConfig()
    values = [subnet_macs(s, m, 1.0) for s in (small.min_subnet(), small.default, base.default, base.max_subnet())]
    assert values == sorted(values) and 1e9 < values[-1] < 1e11
    assert subnet_macs(base.default, m, 2.0) > 2 * subnet_macs(base.default, m, 1.0) * 0.99


@pytest.mark.parametrize("algorithm", ["evolutionary", "random"])
def test_search_respects_budget_and_beats_baseline(algorithm):
    """With a score that prefers narrow FFNs in early layers, the search finds better than the budget's largest."""
    space = SEARCH_SPACES["small"]
    budget = Budget("params", 26_873_600, ModelConfig())
    def score(s: SubnetConfig) -> float:
        return sum(abs(f / s.embed_dim - 3.0) for f in s.ffn_embed[:6]) + 0.001 * abs(s.embed_dim - 384)

    result = search(space, budget, score, algorithm, population=10, generations=4, seed=0)
    assert count_parameters(result.best) <= 26_873_600 and space.contains(result.best)
    assert result.best_score <= result.baseline_score
    assert result.best_score < result.baseline_score  # a real improvement for this score
    assert result.history and all(h["cost"] <= budget.limit for h in result.history)


def test_our_upstream_names_are_lighthubert_teachers(teacher_ckpt):
    from lighthubert_s3prl.training.config import TeacherConfig
    from lighthubert_s3prl.training.teachers import LightHuBERTTeacher, build_teacher

    teacher = build_teacher(TeacherConfig(name="lighthubert_local", ckpt=str(teacher_ckpt),
                                          subnet={"embed_dim": 64, "heads_num": 1, "ffn_ratio": 2.0, "layer_num": 10}),
                            torch.device("cpu"))
    assert isinstance(teacher, LightHuBERTTeacher)
    assert (teacher.num_hidden_states, teacher.num_layer_results, teacher.hidden_dims[0]) == (11, 10, 64)
    with pytest.raises(ConfigError, match="teacher 'lighthubert_local': lighthubert_local needs a checkpoint"):
        build_teacher(TeacherConfig(name="lighthubert_local"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="'subnet' applies to LightHuBERT teachers only"):
        build_teacher(TeacherConfig(name="fbank", subnet="small"), torch.device("cpu"))


SOURCE_TAGS = ("[authors]", "[released]", "[data2vec]", "[HuBERT]", "[EKD]", "[DistilHuBERT]", "[GUESS]")
NO_SOURCE_NEEDED = {"valid", "num_workers", "output_dir", "save_every", "eval_every", "stage"}  # not hyperparameters


@pytest.mark.parametrize("name", ["stage1", "stage2_small", "stage2_base", "ekd_average", "ekd_concat", "ekd_separate"])
def test_every_full_size_hyperparameter_names_its_source_or_is_a_guess(name):
    """A full-size config says, value by value, where the value comes from; docs/training.md lists every guess."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "training.md").read_text()
    guesses_doc = docs[docs.index("Values no source gives"):]
    untagged, guesses = [], []
    for line in (root / "configs" / "train" / f"{name}.yaml").read_text().splitlines():
        match = re.match(r"^\s*(?:- )?(\w+): *([^#\s].*?)?\s*(#.*)?$", line)
        if not match or line.lstrip().startswith("#") or not match.group(2) or match.group(1) in NO_SOURCE_NEEDED:
            continue  # a section header, a comment, or a bookkeeping key
        comment = match.group(3) or ""
        if not any(tag in comment for tag in SOURCE_TAGS):
            untagged.append(line.strip())
        if "[GUESS]" in comment:
            guesses.append(match.group(1))
    assert not untagged, f"{name}.yaml: values without a source: {untagged}"
    assert all(f"`{key}`" in guesses_doc for key in guesses), (name, guesses)


def test_shipped_configs_parse():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "train").glob("*.yaml"))
    assert len(configs) >= 9
    stages = {p.stem: load_config(p).stage for p in configs}
    assert stages["stage1"] == "stage1" and stages["stage2_small"] == "stage2" and stages["ekd_concat"] == "ekd"
    assert load_config(configs[0].parent / "stage2_base.yaml").space == "base"


def test_search_under_a_mac_budget():
    space = SEARCH_SPACES["small"]
    limit = subnet_macs(space.default, ModelConfig(), 2.0)
    budget = Budget("macs", limit, ModelConfig(), seconds=2.0)
    assert budget.baseline(space) == space.default  # the released subnet is the largest uniform one that fits
    result = search(space, budget, lambda s: -sum(s.heads_num) / 100 + abs(s.embed_dim - 384) / 1000,
                    population=8, generations=3, seed=1)
    assert subnet_macs(result.best, ModelConfig(), 2.0) <= limit and result.best_score <= result.baseline_score


def test_stage2_draw_per_process_by_default_or_per_update():
    """per_rank (default, as the released code): processes and micro-batches of one update train different
    subnets, reproducibly; per_rank false: every process and micro-batch of an update trains the same one."""
    from dataclasses import replace
    from types import SimpleNamespace

    from lighthubert_s3prl.training.config import resolve_space
    from lighthubert_s3prl.training.distill import Stage2Task

    from .test_training_fixtures import TINY_SPACE

    cfg = load_config({"data": {"train": "synthetic"}, "teacher": "fbank", "student": {"init": "s1.pt"},
                       "space": TINY_SPACE}, stage="stage2")
    assert cfg.sampling.per_rank is True

    def draws(cfg, rank, micro, steps=range(20)):
        task = SimpleNamespace(cfg=cfg, rank=rank, space=resolve_space(cfg.space))
        return [Stage2Task.subnets_for_step(task, step, micro)[0].to_dict() for step in steps]

    per_process = [draws(cfg, rank, micro) for rank in (0, 1) for micro in (0, 1)]
    assert all(a != b for i, a in enumerate(per_process) for b in per_process[i + 1:])  # 20 steps: never all alike
    assert draws(cfg, 1, 1) == per_process[3]  # the same again: a resumed run draws what it drew before
    shared = replace(cfg, sampling=replace(cfg.sampling, per_rank=False))
    assert draws(shared, 0, 0) == draws(shared, 1, 0) == draws(shared, 1, 1)
