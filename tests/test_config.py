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
