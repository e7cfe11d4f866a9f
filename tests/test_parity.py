"""Our supernet and compact paths against s3prl's bundled reference LightHuBERT, on real 768-wide shapes."""
import pytest
import torch

from lighthubert_s3prl.model.checkpoint import build_supernet, load_checkpoint
from lighthubert_s3prl.model.compact import CompactLightHuBERT
from lighthubert_s3prl.model.config import SEARCH_SPACES, get_preset
from lighthubert_s3prl.upstream.expert import UpstreamExpert, prepare_batch

from .conftest import make_wavs
from .numerics import assert_hidden_states_close, longest_reduction

pytestmark = pytest.mark.numerics


def _seeds_with_depths(space, depths, start=0):
    found = {}
    seed = start
    while set(found) != set(depths):
        d = SEARCH_SPACES[space].sample(seed).layer_num
        if d in depths and d not in found:
            found[d] = seed
        seed += 1
    return [f"random:{space}:{s}" for s in found.values()]


SUBNETS = (
    ["small", "base", "stage1", "small-max", "small-min", "base-max", "base-min"]
    + _seeds_with_depths("small", (10, 11, 12))
    + ["random:base:0", "random:base:1"]
)


@pytest.fixture(scope="module")
def reference(small_ckpt):
    from s3prl.upstream.lighthubert.expert import UpstreamExpert as ReferenceExpert

    return ReferenceExpert(str(small_ckpt)).eval()


@pytest.fixture(scope="module")
def supernet(small_ckpt):
    return build_supernet(load_checkpoint(small_ckpt)).eval()


@pytest.fixture(scope="module")
def batch():
    return make_wavs([16000, 12345, 8000, 5551], seed=7)


def test_subnet_list_covers_depths():
    from lighthubert_s3prl.model.config import resolve_subnet

    depths = {resolve_subnet(s).layer_num for s in SUBNETS}
    assert {10, 11, 12} <= depths and len([s for s in SUBNETS if s.startswith("random:")]) >= 5


@pytest.mark.parametrize("spec", SUBNETS)
def test_hidden_states_match_reference(spec, reference, supernet, batch):
    from lighthubert_s3prl.model.config import resolve_subnet

    subnet = resolve_subnet(spec)
    reference.model.set_sample_config(subnet.to_dict())
    padded, padding_mask = prepare_batch(batch)
    compact = CompactLightHuBERT.from_supernet(supernet, subnet).eval()
    with torch.no_grad():
        expected = reference(batch)["hidden_states"]
        sliced = supernet(padded, padding_mask, subnet=subnet, padding_mode="reference").hidden_states
        dense = compact(padded, padding_mask, padding_mode="reference").hidden_states
    assert len(expected) == len(sliced) == len(dense) == 1 + subnet.layer_num
    assert all(h.shape == (4, 49, subnet.embed_dim) for h in expected + sliced + dense)
    K = longest_reduction(supernet.cfg, subnet)
    assert_hidden_states_close(sliced, expected, K, msg=f"{spec} supernet")
    assert_hidden_states_close(dense, expected, K, msg=f"{spec} compact")
    # the unpadded utterance is the same whatever the padding mode
    with torch.no_grad():
        exact = compact(padded, padding_mask, padding_mode="exact").hidden_states
    assert_hidden_states_close([x[0] for x in exact], [e[0] for e in expected], K, msg=f"{spec} exact, utterance 0")


def test_upstream_defaults_follow_the_checkpoint(small_ckpt, reference, batch):
    """The expert's own default for a hubert_pruner small file is the released small subnet."""
    reference.model.set_sample_config(reference.model.supernet.subnet)
    ours = UpstreamExpert(str(small_ckpt), padding_mode="reference").eval()
    assert ours.subnet == get_preset("small")
    with torch.no_grad():
        expected = reference(batch)["hidden_states"]
        got = ours(batch)["hidden_states"]
    assert len(got) == 13
    assert_hidden_states_close(got, expected, longest_reduction(ours.model.cfg, ours.subnet))


@pytest.mark.parametrize("extractor_mode,layer_norm_first", [("layer_norm", False), ("default", True), ("layer_norm", True)])
def test_other_layouts_match_reference(extractor_mode, layer_norm_first, tmp_path):
    """Both CNN norm layouts and the pre-LN encoder variant, on a tiny supernet and a mixed-size subnet."""
    from s3prl.upstream.lighthubert.expert import UpstreamExpert as ReferenceExpert

    from lighthubert_s3prl.model.checkpoint import tiny_model_config, write_random_checkpoint
    from lighthubert_s3prl.model.config import SubnetConfig

    cfg = tiny_model_config(extractor_mode=extractor_mode, layer_norm_first=layer_norm_first)
    path = write_random_checkpoint(tmp_path / "tiny.pt", "small", seed=4, model_cfg=cfg)
    reference = ReferenceExpert(str(path)).eval()
    supernet = build_supernet(load_checkpoint(path)).eval()
    subnet = SubnetConfig(96, 10, (1, 2) * 5, (192, 288) * 5)
    reference.model.set_sample_config(subnet.to_dict())
    wavs = make_wavs([16000, 9000, 4000], seed=2)
    padded, padding_mask = prepare_batch(wavs)
    with torch.no_grad():
        expected = reference(wavs)["hidden_states"]
        got = supernet(padded, padding_mask, subnet=subnet, padding_mode="reference").hidden_states
    assert len(expected) == len(got) == 11
    assert_hidden_states_close(got, expected, longest_reduction(cfg, subnet))
