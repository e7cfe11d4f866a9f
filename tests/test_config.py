import ast
import random

import pytest

from lighthubert_s3prl.model.config import (
    SEARCH_SPACES,
    ConfigError,
    ModelConfig,
    SubnetConfig,
    count_parameters,
    get_preset,
    kept_layers,
    load_subnet_file,
    parse_conv_layers,
    preset_names,
    resolve_subnet,
    save_subnet_file,
)


@pytest.mark.parametrize(
    "name,params",
    [("small", 26_873_600), ("base", 66_891_520), ("stage1", 94_371_584), ("base-max", 94_371_584),
     ("base-min", 41_243_392), ("small-max", 44_392_192), ("small-min", 11_442_944)],
)
def test_parameter_counts_match_the_released_models(name, params):
    assert count_parameters(get_preset(name)) == params


def test_layer_norm_cnn_adds_its_norms():
    assert count_parameters(get_preset("small"), ModelConfig(extractor_mode="layer_norm")) == 26_873_600 + 6_144


def test_search_space_sizes():
    assert SEARCH_SPACES["base"].size == 6_530_347_008
    assert SEARCH_SPACES["small"].size == 951_892_141_473


def test_presets_have_official_shapes():
    small = get_preset("small").to_dict()
    assert small["embed_dim"] == 384 and small["heads_num"] == [6] * 12 and small["ffn_embed"] == [1536] * 12
    assert small["atten_dim"] == [384] * 12 and small["slide_wsz"] == ["global"] * 12
    assert get_preset("small-min").layer_num == 10 and get_preset("small-min").ffn_embed == (768,) * 10
    assert get_preset("base-min").ffn_embed == (1792,) * 12
    assert set(preset_names()) >= {"small", "base", "stage1", "small-max", "small-min", "base-max", "base-min"}


def _authors_draw(space: str, seed: int) -> dict:
    """The subnet dict the authors' own sampler (bundled with s3prl) draws with ``seed``."""
    from s3prl.upstream.lighthubert.lighthubert.lighthubert import LightHuBERTSupernetConfig

    random.seed(seed)
    return LightHuBERTSupernetConfig(space).sample_subnet()


def test_seeded_sampling_follows_the_authors_draw_order():
    for space in ("small", "base"):
        for seed in range(20):
            theirs = _authors_draw(space, seed)
            ours = SEARCH_SPACES[space].sample(seed)
            assert ours.to_dict() == theirs
            assert SEARCH_SPACES[space].contains(ours)


def test_depth_maps():
    assert kept_layers(12) == list(range(12))
    assert kept_layers(11) == list(range(11))
    assert kept_layers(10) == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]


def test_dict_round_trip_and_shorthand(tmp_path):
    import json

    import yaml

    theirs = _authors_draw("small", 3)
    sub = SubnetConfig.from_dict(theirs)
    assert sub.to_dict() == theirs
    short = SubnetConfig.from_dict({"embed_dim": 384, "layer_num": 12, "heads_num": 6, "ffn_ratio": 4.0})
    assert short == SubnetConfig(384, 12, (6,) * 12, (1536,) * 12)
    for suffix, parse in ((".yaml", yaml.safe_load), (".json", json.loads)):
        path = tmp_path / f"sub{suffix}"
        save_subnet_file(sub, path, params=123)
        # what is on disk is the authors' dict, read by a plain parser, not only by our own reader
        assert parse(path.read_text()) == {"subnet": theirs, "params": 123}
        assert load_subnet_file(path) == sub
    small_min = SubnetConfig(256, 10, (4,) * 10, (768,) * 10)
    # a -g style file naming a preset is read back by every path that takes a subnet file
    preset = tmp_path / "preset.yaml"
    preset.write_text("subnet: small-min\nimplementation: compact\n")
    assert load_subnet_file(preset) == small_min and resolve_subnet(str(preset)) == small_min
    (tmp_path / "seeded.yaml").write_text("subnet: random:small:3\n")
    assert load_subnet_file(tmp_path / "seeded.yaml") == sub
    (tmp_path / "indirect.yaml").write_text("subnet: preset.yaml\n")  # a file beside it
    assert load_subnet_file(tmp_path / "indirect.yaml") == small_min
    (tmp_path / "loop.yaml").write_text("subnet: loop.yaml\n")
    with pytest.raises(ConfigError, match="refers back to .*loop.yaml'?: a loop"):
        load_subnet_file(tmp_path / "loop.yaml")
    (tmp_path / "typo.yaml").write_text("subnet: smal\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown subnet preset 'smal'"):
        load_subnet_file(tmp_path / "typo.yaml")
    assert resolve_subnet({"embed_dim": 256, "layer_num": 10, "heads_num": 4, "ffn_embed": 768}) == small_min
    assert resolve_subnet("random:base:5").to_dict() == _authors_draw("base", 5)


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"embed_dim": 384, "layer_num": 5, "heads_num": 6, "ffn_embed": 1536}, "layer_num=5 is not allowed; allowed values: [6, 7, 8, 9, 10, 11, 12]"),
        ({"embed_dim": 1024, "layer_num": 12, "heads_num": 6, "ffn_embed": 1536}, "'embed_dim'=1024 is not allowed; allowed values: 1..768"),
        ({"embed_dim": 384, "layer_num": 12, "heads_num": 13, "ffn_embed": 1536}, "'heads_num'[0]=13 is not allowed; allowed values: 1..12"),
        ({"embed_dim": 384, "layer_num": 12, "heads_num": 6, "ffn_embed": 2000}, "'ffn_embed'[0]=2000 is not allowed at embed_dim=384; allowed values: 1..1536"),
        ({"embed_dim": 384, "layer_num": 12, "heads_num": [6] * 11, "ffn_embed": 1536}, "'heads_num' has 11 entries but layer_num is 12"),
        ({"embed_dim": 384, "layer_num": 12, "heads_num": 6, "ffn_embed": 1536, "atten_dim": 512}, "atten_dim=512 must equal heads_num*64=384"),
        ({"embed_dim": 384, "layer_num": 12, "heads_num": 6, "ffn_embed": 1536, "slide_wsz": 32}, "slide_wsz=32 is not supported; allowed values: ['global']"),
        ({"embed_dim": 384, "layer_num": 12, "heads_num": 6}, "'ffn_embed' (or 'ffn_ratio') is missing"),
        ({"embed_dim": 384, "layer_num": 12, "heads_num": 6, "ffn_embed": 1536, "depth": 3}, "unknown subnet field(s) ['depth']"),
        ({"embed_dim": "big", "layer_num": 12, "heads_num": 6, "ffn_embed": 1536}, "'embed_dim' must be an integer, got 'big'"),
        ({"embed_dim": 392, "layer_num": 12, "heads_num": 6, "ffn_embed": 1536}, "must be a multiple of conv_pos_groups=16"),
    ],
)
def test_invalid_subnets_name_field_value_and_allowed_values(bad, needle):
    with pytest.raises(ConfigError) as err:
        SubnetConfig.from_dict(bad).validate_for(ModelConfig())
    assert needle in str(err.value)


def test_bad_specs_and_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown subnet preset 'tiny'; allowed values"):
        get_preset("tiny")
    with pytest.raises(ConfigError, match="unknown search space 'huge'"):
        resolve_subnet("random:huge:1")
    with pytest.raises(ConfigError, match="must look like 'random:SPACE:SEED'"):
        resolve_subnet("random:small")
    with pytest.raises(ConfigError, match="does not exist"):
        load_subnet_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("subnet: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_subnet_file(broken)


def test_conv_layers_are_parsed_without_eval():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")[-1] == (512, 2, 2)
    assert len(parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")) == 7
    for evil in ("__import__('os').system('true')", "[(512,10,5)] * 10**9", "[(1,2)]"):
        with pytest.raises(ConfigError, match="conv_feature_layers"):
            parse_conv_layers(evil)


def test_python_dash_m_runs_the_cli(tmp_path):
    """``python -m lighthubert_s3prl`` is the same CLI as the ``lighthubert-s3prl`` script."""
    import subprocess
    import sys

    run = lambda *args: subprocess.run([sys.executable, "-m", "lighthubert_s3prl", *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    shown = run("--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python -m lighthubert_s3prl COMMAND")
    assert "subnet" in shown.stdout and "quickstart" in shown.stdout
    counted = run("subnet", "base", "-o", str(tmp_path / "base.yaml"))
    assert counted.returncode == 0, counted.stderr
    assert "parameters: 66,891,520" in counted.stdout  # the released base model (paper: 67M)
    assert (tmp_path / "base.yaml").is_file()
    wrong = run("no-such-command")
    assert wrong.returncode == 2 and "unknown command 'no-such-command'" in wrong.stderr


# --------------------------------------------------------------------------------------------------- depth maps
def test_depth_maps_agree_with_the_authors_encoder():
    """Every depth's kept layers, read from the reference encoder s3prl bundles (not from our table)."""
    import inspect
    import re

    from s3prl.upstream.lighthubert.lighthubert.modules.scaling_transformer import STransformerEncoder

    source = inspect.getsource(STransformerEncoder.__init__)  # the table is a literal in their __init__
    table = re.search(r"self\.depth_maps = (\{.*?\n\s*\})", source, re.S).group(1)
    depth_maps = ast.literal_eval(table)
    assert sorted(depth_maps) == [6, 7, 8, 9, 10, 11, 12]
    for depth, keep in depth_maps.items():
        assert kept_layers(depth) == [i for i, k in enumerate(keep) if k], depth
    with pytest.raises(ConfigError, match=r"layer_num=13 is not allowed; allowed values: \[6, 7, 8, 9, 10, 11, 12\]"):
        kept_layers(13)


def test_depth_of_a_non_standard_supernet_keeps_the_first_layers():
    assert kept_layers(3, supernet_layers=4) == [0, 1, 2]
    assert kept_layers(4, supernet_layers=4) == [0, 1, 2, 3]
    assert kept_layers(1, supernet_layers=4) == [0]
    for bad in (0, 5):
        with pytest.raises(ConfigError, match=rf"layer_num={bad} is not allowed for a 4-layer supernet; allowed values: 1..4"):
            kept_layers(bad, supernet_layers=4)


# --------------------------------------------------------------------------------------------------- subnet dicts
def _small(**fields):
    return {"embed_dim": 384, "layer_num": 12, "heads_num": 6, "ffn_embed": 1536, **fields}


def test_ffn_ratio_and_ffn_embed_must_agree_layer_by_layer():
    ratios = [4.0] * 11 + [3.5]
    ffn = [1536] * 11 + [1344]
    agreeing = SubnetConfig.from_dict(_small(ffn_embed=ffn, ffn_ratio=ratios))
    assert agreeing.ffn_embed == tuple(ffn)
    assert SubnetConfig.from_dict(_small(ffn_embed=None, ffn_ratio=ratios) | {"ffn_embed": ffn}) == agreeing
    by_ratio = {k: v for k, v in _small(ffn_ratio=ratios).items() if k != "ffn_embed"}
    assert SubnetConfig.from_dict(by_ratio).ffn_embed == tuple(ffn)  # int(3.5 * 384) = 1344
    assert SubnetConfig.from_dict({**by_ratio, "ffn_ratio": 3.0}).ffn_embed == (1152,) * 12
    with pytest.raises(ConfigError) as err:
        SubnetConfig.from_dict(_small(ffn_embed=ffn, ffn_ratio=[4.0] * 12))
    assert str(err.value) == ("subnet layer 11: ffn_embed=1344 disagrees with ffn_ratio=4.0 at embed_dim=384 "
                              "(expected 1536); give only one of them")


def test_atten_dim_and_slide_wsz_are_checked_per_layer():
    heads = [6] * 11 + [4]
    ok = SubnetConfig.from_dict(_small(heads_num=heads, atten_dim=[384] * 11 + [256], slide_wsz=["global"] * 12))
    assert ok.heads_num == tuple(heads) and ok.atten_dim == (384,) * 11 + (256,)
    assert SubnetConfig.from_dict(_small(atten_dim=384.0, slide_wsz="global")).heads_num == (6,) * 12
    with pytest.raises(ConfigError) as err:
        SubnetConfig.from_dict(_small(heads_num=heads, atten_dim=384))
    assert str(err.value) == "subnet layer 11: atten_dim=384 must equal heads_num*64=256"
    with pytest.raises(ConfigError, match="subnet field 'atten_dim' must be an integer, got 384.5"):
        SubnetConfig.from_dict(_small(atten_dim=384.5))
    with pytest.raises(ConfigError) as err:
        SubnetConfig.from_dict(_small(slide_wsz=["global"] * 11 + [16]))
    assert str(err.value).startswith("subnet layer 11: slide_wsz=16 is not supported; allowed values: ['global']")


@pytest.mark.parametrize("field,value,message", [
    ("embed_dim", True, "subnet field 'embed_dim' must be an integer, got True"),
    ("embed_dim", 384.5, "subnet field 'embed_dim' must be an integer, got 384.5"),
    ("layer_num", "12", "subnet field 'layer_num' must be an integer, got '12'"),
    ("heads_num", [6] * 11 + [None], "subnet field 'heads_num' must be an integer, got None"),
    ("ffn_embed", [1536] * 11 + [1.5], "subnet field 'ffn_embed' must be an integer, got 1.5"),
    ("ffn_embed", [1536] * 13, "subnet field 'ffn_embed' has 13 entries but layer_num is 12; give one value per "
                               "kept layer or a single value for all"),
])
def test_each_field_is_type_checked_with_its_name(field, value, message):
    with pytest.raises(ConfigError) as err:
        SubnetConfig.from_dict(_small(**{field: value}))
    assert str(err.value) == message


def test_whole_number_floats_are_accepted_as_integers():
    assert SubnetConfig.from_dict(_small(embed_dim=384.0, layer_num=12.0, heads_num=6.0)) == get_preset("small")


@pytest.mark.parametrize("missing", ["embed_dim", "layer_num", "heads_num"])
def test_required_fields(missing):
    d = _small()
    del d[missing]
    with pytest.raises(ConfigError) as err:
        SubnetConfig.from_dict(d)
    assert str(err.value) == f"subnet field {missing!r} is missing"


def test_subnet_must_be_a_mapping_and_lists_must_match_depth():
    with pytest.raises(ConfigError, match="a subnet must be a mapping of fields, got list"):
        SubnetConfig.from_dict([384, 12])
    with pytest.raises(ConfigError) as err:
        SubnetConfig(384, 12, (6,) * 12, (1536,) * 11)
    assert str(err.value) == "heads_num and ffn_embed need layer_num=12 entries, got 12 and 11"
    with pytest.raises(ConfigError, match="got 11 and 12"):
        SubnetConfig(384, 12, (6,) * 11, (1536,) * 12)
    assert SubnetConfig(384, 2, [6, 4], [1536, 768]).heads_num == (6, 4)  # lists become tuples (hashable)


def test_unknown_fields_are_listed_sorted_with_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        SubnetConfig.from_dict(_small(zeta=1, alpha=2))
    assert str(err.value) == ("unknown subnet field(s) ['alpha', 'zeta']; allowed fields: ['atten_dim', 'embed_dim', "
                              "'ffn_embed', 'ffn_ratio', 'heads_num', 'layer_num', 'slide_wsz']")


@pytest.mark.parametrize("subnet,message", [
    (SubnetConfig(0, 12, (6,) * 12, (1536,) * 12), "'embed_dim'=0 is not allowed; allowed values: 1..768"),
    (SubnetConfig(768, 12, (12,) * 12, (3072,) * 12), None),  # the supernet itself, every bound inclusive
    (SubnetConfig(384, 12, (0,) * 12, (1536,) * 12), "'heads_num'[0]=0 is not allowed; allowed values: 1..12"),
    (SubnetConfig(384, 12, (6,) * 11 + (0,), (1536,) * 12), "'heads_num'[11]=0 is not allowed"),
    (SubnetConfig(384, 12, (6,) * 12, (1536,) * 11 + (0,)), "'ffn_embed'[11]=0 is not allowed at embed_dim=384; "
                                                            "allowed values: 1..1536 (4 x embed_dim)"),
    (SubnetConfig(384, 12, (6,) * 12, (1536,) * 11 + (1537,)), "'ffn_embed'[11]=1537 is not allowed"),
    (SubnetConfig(16, 6, (1,) * 6, (64,) * 6), None),  # the smallest legal width and depth
])
def test_validate_for_bounds(subnet, message):
    if message is None:
        subnet.validate_for(ModelConfig())
    else:
        with pytest.raises(ConfigError) as err:
            subnet.validate_for(ModelConfig())
        assert message in str(err.value)


def test_describe_compacts_uniform_layers_only():
    assert get_preset("small").describe() == "embed_dim=384 layers=12 heads=6 ffn=1536"
    mixed = SubnetConfig(256, 10, (4,) * 9 + (8,), (768,) * 10)
    assert mixed.describe() == "embed_dim=256 layers=10 heads=4,4,4,4,4,4,4,4,4,8 ffn=768"
    assert mixed.ffn_ratio == (3.0,) * 10 and mixed.atten_dim == (256,) * 9 + (512,)


# --------------------------------------------------------------------------------------------------- presets, specs
def test_preset_names_and_spellings():
    assert preset_names() == ["small", "base", "stage1", "base-max", "base-min", "small-max", "small-min"]
    assert get_preset("Small_Min") == get_preset("small-min") == SubnetConfig.uniform(256, 4, 768, 10)
    assert get_preset("BASE") == SubnetConfig.uniform(640, 10, 2560, 12)
    assert get_preset("stage1") == get_preset("base-max") == SubnetConfig.uniform(768, 12, 3072, 12)
    assert get_preset("small-max") == SubnetConfig.uniform(512, 8, 2048, 12)
    for bad in ("small-mid", "tiny-max", "-max"):
        with pytest.raises(ConfigError, match=f"unknown subnet preset {bad!r}"):
            get_preset(bad)


def test_resolve_subnet_spec_forms(tmp_path):
    small = get_preset("small")
    assert resolve_subnet(None, default=small) is small and resolve_subnet("", default=small) is small
    with pytest.raises(ConfigError, match="no subnet given and the checkpoint names none"):
        resolve_subnet(None)
    assert resolve_subnet(small) is small
    assert resolve_subnet("random:small:-1") == SEARCH_SPACES["small"].sample(random.Random(-1))
    for bad in ("random:small:x", "random:small:1:2", "random::"):
        with pytest.raises(ConfigError, match="must look like 'random:SPACE:SEED'"):
            resolve_subnet(bad)
    assert resolve_subnet("budget:small:30e6") == resolve_subnet("budget:small:30000000")
    assert count_parameters(resolve_subnet("budget:small:30e6")) <= 30_000_000
    with pytest.raises(ConfigError, match="must look like 'budget:SPACE:PARAMS'"):
        resolve_subnet("budget:small")
    with pytest.raises(ConfigError, match="budget:small:lots.*budget 'lots' is not a number"):
        resolve_subnet("budget:small:lots")
    with pytest.raises(ConfigError, match="unknown search space 'huge'; allowed values: \\['base', 'small'\\]"):
        resolve_subnet("budget:huge:1e9")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_subnet(str(tmp_path / "absent.json"))  # a subnet-file suffix is read as a file, never a preset
    plain = tmp_path / "plain_subnet"  # an existing file without a suffix is read as YAML
    plain.write_text("embed_dim: 256\nlayer_num: 10\nheads_num: 4\nffn_embed: 768\n")
    assert resolve_subnet(str(plain)) == get_preset("small-min")


def test_subnet_files_in_every_form(tmp_path):
    import json

    small = get_preset("small")
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"subnet": small.to_dict(), "params": 1}))
    assert load_subnet_file(nested) == small
    flat = tmp_path / "flat.yml"
    flat.write_text("embed_dim: 384\nlayer_num: 12\nheads_num: 6\nffn_ratio: 4.0\n")
    assert load_subnet_file(flat) == small
    preset = tmp_path / "preset.yaml"
    preset.write_text("preset: small_min\n")
    assert load_subnet_file(preset) == get_preset("small-min")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{'single': quotes}")
    with pytest.raises(ConfigError, match="bad.json' cannot be parsed"):
        load_subnet_file(bad_json)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 384\n- 12\n")
    with pytest.raises(ConfigError, match="list.yaml: a subnet must be a mapping of fields, got list"):
        load_subnet_file(listed)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("embed_dim: 384\nlayer_num: 12\nheads_num: 6\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: subnet field 'ffn_embed' \(or 'ffn_ratio'\) is missing"):
        load_subnet_file(wrong)
    (tmp_path / "a.yaml").write_text("subnet: b.yaml\n")
    (tmp_path / "b.yaml").write_text("subnet: a.yaml\n")
    with pytest.raises(ConfigError, match="a loop"):
        load_subnet_file(tmp_path / "a.yaml")


# --------------------------------------------------------------------------------------------------- search spaces
def test_search_space_from_dict_sorts_dedups_and_defaults():
    from lighthubert_s3prl.model.config import SearchSpace

    space = SearchSpace.from_dict({"embed_dim": [512, 256, 256], "heads_num": [8, 4], "ffn_ratio": [4, 3.0],
                                   "layer_num": [12, 10]})
    assert (space.name, space.embed_dim, space.heads_num, space.ffn_ratio, space.layer_num) == \
        ("custom", (256, 512), (4, 8), (3.0, 4.0), (10, 12))
    assert space.default == SubnetConfig.uniform(512, 8, 2048, 12)  # the largest member unless given
    assert space.size == 2 * (4 ** 10 + 4 ** 12)
    assert space.min_subnet() == SubnetConfig.uniform(256, 4, 768, 10)
    round_trip = SearchSpace.from_dict(space.to_dict())
    assert round_trip == space
    named = SearchSpace.from_dict({**space.to_dict(), "name": "mine", "default": "small-min"})
    assert named.name == "mine" and named.default == get_preset("small-min")
    for key, value, message in (
        ("embed_dim", [], "space.embed_dim must be a non-empty list (e.g. embed_dim: [256, 384, 512]), got []"),
        ("heads_num", 4, "space.heads_num must be a non-empty list"),
        ("ffn_ratio", ["wide"], "space.ffn_ratio=['wide'] must hold numbers"),
        ("layer_num", [None], "space.layer_num=[None] must hold numbers"),
    ):
        with pytest.raises(ConfigError) as err:
            SearchSpace.from_dict({**space.to_dict(), key: value})
        assert message in str(err.value)
    with pytest.raises(ConfigError, match=r"space.default: unknown subnet preset 'nope'"):
        SearchSpace.from_dict({**space.to_dict(), "default": "nope"})
    with pytest.raises(ConfigError, match=r"space.default \(embed_dim=384 layers=12 heads=6 ffn=1536\) is not a member"):
        SearchSpace.from_dict({**space.to_dict(), "default": "small"})


def test_space_membership_checks_every_field():
    space = SEARCH_SPACES["small"]
    member = SubnetConfig(384, 11, (4, 6, 8) * 3 + (4, 4), (1152, 1344, 1536) * 3 + (1152, 1536))
    assert space.contains(member)
    assert not space.contains(SubnetConfig.uniform(448, 6, 1536, 12))  # width not in the space
    assert not space.contains(SubnetConfig.uniform(384, 6, 1536, 9))  # depth
    assert not space.contains(SubnetConfig(384, 11, (4, 6, 8) * 3 + (4, 5), member.ffn_embed))  # one layer's heads
    assert not space.contains(SubnetConfig(384, 11, member.heads_num, member.ffn_embed[:-1] + (1535,)))  # one FFN
    assert not space.contains(SubnetConfig.uniform(384, 6, 1024, 12))  # ratio 8/3 is not in the space


# --------------------------------------------------------------------------------------------------- model configs
def test_model_config_reads_known_checkpoint_fields_only():
    cfg = ModelConfig.from_checkpoint_cfg({"encoder_embed_dim": 128, "encoder_attention_heads": 2,
                                           "encoder_ffn_embed_dim": 512, "label_rate": 50, "_name": "x"})
    assert (cfg.encoder_embed_dim, cfg.encoder_attention_heads, cfg.encoder_ffn_embed_dim) == (128, 2, 512)
    written = cfg.to_checkpoint_cfg()
    assert written["encoder_embed_dim"] == 128 and "label_rate" not in written and len(written) == 23
    assert ModelConfig.from_checkpoint_cfg(written) == cfg
    assert cfg.ffn_chunks == 4 and cfg.cnn_dim == 512 and cfg.embed_dim_max == 128
    assert ModelConfig(layer_pred_num="0,0,0,0,0,0,0,0,2,0,0,1").pred_layers == {8: 2, 11: 1}


@pytest.mark.parametrize("fields,message", [
    ({"extractor_mode": "group"}, "extractor_mode='group' is not supported; allowed values: 'default', 'layer_norm'"),
    ({"encoder_attention_heads": 8}, "encoder_attention_heads=8 times head size 64 must equal encoder_embed_dim=768"),
    ({"encoder_ffn_embed_dim": 3000}, "encoder_ffn_embed_dim=3000 must be a multiple of encoder_embed_dim=768"),
    ({"pos_conv_depth": 2}, "pos_conv_depth=2 is not supported; released checkpoints use 1"),
    ({"layer_norm_first": "yes"}, "layer_norm_first='yes' must be true or false"),
    ({"activation_fn": "relu"}, "activation_fn='relu' is not supported; allowed values: 'gelu'"),
    ({"conv_pos_groups": 7}, "conv_pos_groups=7 must divide encoder_embed_dim=768"),
    ({"layer_pred_num": "0,1"}, "layer_pred_num='0,1' has 2 entries; it needs one per encoder layer (12)"),
    ({"conv_feature_layers": "[(512, 10)]"}, "every entry must be a (dim, kernel, stride) triple"),
])
def test_model_config_refuses_what_the_model_cannot_build(fields, message):
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_checkpoint_cfg(fields)
    assert message in str(err.value)


def test_conv_bias_and_width_enter_the_parameter_count():
    """Hand count: a bias adds one value per CNN channel (7 layers of 512); the count follows the conv spec."""
    assert count_parameters(get_preset("small"), ModelConfig(conv_bias=True)) == 26_873_600 + 7 * 512
    narrow = ModelConfig(conv_feature_layers="[(256,10,5)] + [(256,3,2)] * 4 + [(256,2,2)] * 2")
    cnn_512 = 512 * 10 + 2 * 512 + 4 * 512 * 512 * 3 + 2 * 512 * 512 * 2
    cnn_256 = 256 * 10 + 2 * 256 + 4 * 256 * 256 * 3 + 2 * 256 * 256 * 2
    # the CNN, the feature LayerNorm (2C) and post_extract_proj (E*C) shrink with C = 256
    expected = 26_873_600 - cnn_512 + cnn_256 - 2 * 256 - 384 * 256
    assert count_parameters(get_preset("small"), narrow) == expected


def test_conv_layers_accept_sequences_and_refuse_malformed_specs():
    assert parse_conv_layers([[512, 10, 5], (512, 3, 2)]) == [(512, 10, 5), (512, 3, 2)]
    assert parse_conv_layers("((64, 4, 2),) * 3") == [(64, 4, 2)] * 3
    assert parse_conv_layers("3 * [(64, 4, 2)]") == [(64, 4, 2)] * 3
    assert parse_conv_layers("[(8 * 8, 2 * 2, 2)] * 64") == [(64, 4, 2)] * 64  # repetition up to 64 is allowed
    for spec, reason in (
        ("[(64, 4, 2)] * 65", "list repetition must be by a small integer"),
        ("[(64, 4, 2)] * [2]", "list repetition must be by a small integer"),
        ("[(64, 4, 2.0)]", "unsupported syntax Constant"),
        ("[(64, 4, 2)] - [(64, 4, 2)]", "unsupported syntax BinOp"),
        ("[(64, 4, x)]", "unsupported syntax Name"),
        ("[(64, 4, -2)]", "unsupported syntax UnaryOp"),
        ("[(64, 4,", "was never closed"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_conv_layers(spec)
        assert f"conv_feature_layers={spec!r} is not a list of (dim, kernel, stride) tuples" in str(err.value)
        assert reason in str(err.value) and "Expected something like" in str(err.value)
    for spec in ("[]", [], "[(64, 0, 2)]", "[(64, 4, 2, 1)]", "7", [[64, 4, "2"]]):
        with pytest.raises(ConfigError, match="conv_feature_layers="):
            parse_conv_layers(spec)


def test_per_layer_ffn_ratio_of_the_wrong_length_is_named():
    d = {"embed_dim": 384, "layer_num": 12, "heads_num": 6, "ffn_embed": 1536, "ffn_ratio": [4.0] * 11}
    with pytest.raises(ConfigError) as err:
        SubnetConfig.from_dict(d)
    assert str(err.value).startswith("subnet field 'ffn_ratio' has 11 entries but layer_num is 12")


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as err:
        load_subnet_file(missing)
    assert str(err.value) == f"subnet config file {str(missing)!r} does not exist"
    (tmp_path / "a.yaml").write_text("subnet: a.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_subnet_file(tmp_path / "a.yaml")
    assert str(err.value) == (f"subnet config file {str(tmp_path / 'a.yaml')!r} refers back to "
                              f"{str(tmp_path / 'a.yaml')!r}: a loop")


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json", ".YML"])
def test_a_subnet_file_may_name_another_file_beside_it(tmp_path, suffix):
    target = tmp_path / f"target{suffix}"
    save_subnet_file(get_preset("small-min"), target.with_suffix(suffix.lower()))
    if suffix != suffix.lower():
        target.with_suffix(suffix.lower()).rename(target)
    (tmp_path / "pointer.yaml").write_text(f"subnet: target{suffix}\n")
    assert load_subnet_file(tmp_path / "pointer.yaml") == get_preset("small-min")


def test_a_preset_name_wins_over_a_file_without_a_subnet_suffix(tmp_path):
    """``subnet: small`` names the preset even when a file called ``small`` sits beside the YAML."""
    (tmp_path / "small").write_text("embed_dim: 256\nlayer_num: 10\nheads_num: 4\nffn_embed: 768\n")
    (tmp_path / "pointer.yaml").write_text("subnet: small\n")
    assert load_subnet_file(tmp_path / "pointer.yaml") == get_preset("small")


def test_saved_subnet_files_are_laid_out_for_reading(tmp_path):
    """The subnet comes first, then the extra fields in the order given; JSON is indented by two spaces."""
    sub = SubnetConfig.uniform(256, 4, 768, 6)
    save_subnet_file(sub, tmp_path / "s.yaml", params=7, note="n")
    lines = (tmp_path / "s.yaml").read_text().splitlines()
    assert lines[0] == "subnet:" and lines[1] == "  atten_dim:" and lines[-2:] == ["params: 7", "note: n"]
    assert [line for line in lines if not line.startswith(" ")] == ["subnet:", "params: 7", "note: n"]
    save_subnet_file(sub, tmp_path / "s.json", params=7)
    text = (tmp_path / "s.json").read_text()
    assert text.startswith('{\n  "subnet": {\n    "atten_dim": [\n      256,') and text.endswith('\n  "params": 7\n}\n')


@pytest.mark.parametrize("field,value", [("ffn_ratio", [4.0] * 11), ("atten_dim", [384] * 11),
                                         ("slide_wsz", ["global"] * 11)])
def test_every_per_layer_field_of_the_wrong_length_is_named(field, value):
    d = {"embed_dim": 384, "layer_num": 12, "heads_num": 6, field: value}
    if field != "ffn_ratio":
        d["ffn_embed"] = 1536
    with pytest.raises(ConfigError) as err:
        SubnetConfig.from_dict(d)
    assert str(err.value).startswith(f"subnet field {field!r} has 11 entries but layer_num is 12")


def test_spec_errors_in_full(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_subnet(None)
    assert str(err.value) == "no subnet given and the checkpoint names none"
    for name in ("absent.yaml", "absent.yml", "absent.JSON"):  # a subnet-file suffix: read as a file, not a preset
        with pytest.raises(ConfigError) as err:
            resolve_subnet(str(tmp_path / name))
        assert str(err.value) == f"subnet config file {str(tmp_path / name)!r} does not exist"


def test_layer_norm_extractor_and_pre_norm_layers_are_valid_architectures():
    assert ModelConfig.from_checkpoint_cfg({"extractor_mode": "layer_norm"}).extractor_mode == "layer_norm"
    assert ModelConfig.from_checkpoint_cfg({"layer_norm_first": True}).layer_norm_first is True


def test_budget_error_counts_the_smallest_subnet_of_the_given_architecture():
    """With conv biases the smallest 'small' subnet has 7 x 512 more parameters than the released shape."""
    from lighthubert_s3prl.model.config import largest_subnet_under_budget

    with pytest.raises(ConfigError) as err:
        largest_subnet_under_budget(SEARCH_SPACES["small"], 1000, ModelConfig(conv_bias=True))
    assert str(err.value).endswith(f"the smallest has {11_442_944 + 7 * 512:,}")


def test_boundary_values_that_are_legal():
    """A stride or kernel of 1, an FFN of width 1 and, with one positional-conv group, a width of 1 are legal."""
    assert parse_conv_layers("[(64, 1, 1)]") == [(64, 1, 1)]
    SubnetConfig(16, 6, (1,) * 6, (1,) * 6).validate_for(ModelConfig())
    SubnetConfig(1, 6, (1,) * 6, (4,) * 6).validate_for(ModelConfig(conv_pos_groups=1))
    listed = SubnetConfig(384, 2, [6, 4], [1536, 768])
    assert listed.ffn_embed == (1536, 768) and hash(listed) == hash(SubnetConfig(384, 2, (6, 4), (1536, 768)))
