"""Exporting a uniform subnet as a Hugging Face ``transformers.HubertModel``.

Why: a subnet with the same heads and FFN width in every layer, whose attention is as wide as its
embedding (heads x 64 == embed_dim, since HubertModel's head size is hidden_size / heads), *is* a HuBERT of
smaller size. Written as ``config.json`` + ``model.safetensors`` + ``preprocessor_config.json``, it loads
with ``HubertModel.from_pretrained(DIR)`` and ``AutoFeatureExtractor.from_pretrained(DIR)``, with no
dependency on this package. Any other subnet (per-layer sizes, or attention narrower or wider than the
embedding) has no HubertModel equivalent; ``lighthubert-s3prl export --format onnx`` exports those.
Pre-LN encoders (``layer_norm_first=True``) are refused as well: HubertModel's pre-LN variant applies the
final LayerNorm to the last hidden state it returns, where this model returns that state un-normalised.

What equals what, for a model in eval mode (dropout and layerdrop act only in training):

* HF's ``hidden_states[1:]`` are the layer outputs and equal ours ``[1:]``.
* Hidden state 0 is defined differently. Ours is the output of ``post_extract_proj``, before the
  positional conv and the encoder LayerNorm; HF's ``hidden_states[0]`` is the encoder input after both,
  ``LN(h0 + pos_conv(h0))``. Our h0 is the output of HF's ``model.feature_projection``;
  :func:`hf_hidden_states` hooks it there and returns the whole list in our convention.
* Padded batches: with the ``layer_norm`` CNN every frame depends only on its own samples, so HubertModel
  given ``attention_mask`` matches ours on valid frames. With the ``default`` CNN (``feat_extract_norm=
  "group"``) the first conv's GroupNorm takes its statistics over the whole padded input, padding
  included, so a padded batch does not reproduce the utterances run alone (as this package's upstream
  does). Run such a model one utterance at a time, or let :func:`hf_hidden_states` do that when given an
  ``attention_mask``. The written feature extractor follows HF's convention: it returns an attention mask
  for the ``layer_norm`` CNN only; for a padded batch for the other, ask for ``return_attention_mask=True``,
  without which each waveform is normalised together with its padding.
* Input normalisation: ``Wav2Vec2FeatureExtractor`` divides by ``sqrt(var + 1e-7)`` where training (and
  this package's upstream) used ``F.layer_norm``, ``sqrt(var + 1e-5)``. The inputs differ by a scale factor
  only, which the bias-free first conv passes on and its norm removes up to that norm's own eps. At speech
  level (RMS 0.2) the inputs differ by ~2e-4 and the hidden states by ~5e-6; quiet audio scales more (x1.75
  at RMS 2e-3, x8.3 at RMS 2e-4), and the hidden states of the seeded random test model then moved by 4e-4
  and 4e-2. For the exact inputs of training, pass ``F.layer_norm(wav, wav.shape)`` as ``input_values``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from .compact import CompactLightHuBERT
from .config import HEAD_DIM, ModelConfig, SubnetConfig
from .checkpoint import load_checkpoint
from .export import ExportError, describe_size
from .modules import LN_EPS, conv_output_lengths

ONNX_ALTERNATIVE = "export it with `lighthubert-s3prl export --format onnx` instead, which handles any subnet"
SAMPLING_RATE = 16000


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ExportError(
            "exporting to Hugging Face format needs the transformers package: pip install 'lighthubert-s3prl[hf]'"
        ) from None
    return transformers


def check_hf_compatible(cfg: ModelConfig, subnet: SubnetConfig) -> None:
    """Raise :class:`ExportError` unless ``subnet`` of ``cfg`` is exactly a (smaller) HubertModel."""
    if cfg.layer_norm_first:
        raise ExportError(
            "this model is pre-LN (layer_norm_first=True): HubertModel's pre-LN encoder returns a normalised last "
            f"hidden state where this model's is un-normalised, so the export would not reproduce it; {ONNX_ALTERNATIVE}"
        )
    shapes: Dict[tuple, List[int]] = {}
    for i, shape in enumerate(zip(subnet.heads_num, subnet.ffn_embed)):
        shapes.setdefault(shape, []).append(i)
    if len(shapes) > 1:
        groups = "; ".join(
            f"layer{'s' if len(idx) > 1 else ''} {', '.join(map(str, idx))} "
            f"{'have' if len(idx) > 1 else 'has'} {h} head{'s' if h != 1 else ''} (attention width {HEAD_DIM * h}) "
            f"and FFN {f}"
            for (h, f), idx in shapes.items()
        )
        raise ExportError(
            f"subnet {subnet.describe()} is not a plain HuBERT, its layers differ: {groups}. HubertModel needs the "
            f"same heads and FFN width in every layer; {ONNX_ALTERNATIVE}"
        )
    (heads, _), = shapes
    if heads * HEAD_DIM != subnet.embed_dim:
        raise ExportError(
            f"subnet {subnet.describe()} is not a plain HuBERT: its {heads} heads give attention width "
            f"{heads * HEAD_DIM} but embed_dim is {subnet.embed_dim}, and HubertModel's attention is as wide as its "
            f"hidden size (head size hidden_size / heads, here {subnet.embed_dim / heads:g} instead of {HEAD_DIM}); "
            f"{ONNX_ALTERNATIVE}"
        )


def hubert_config(cfg: ModelConfig, subnet: SubnetConfig) -> Any:
    """The ``transformers.HubertConfig`` of ``subnet``; raises :class:`ExportError` if it has none."""
    check_hf_compatible(cfg, subnet)
    transformers = _transformers()
    dims, kernels, strides = zip(*cfg.conv_layers)
    return transformers.HubertConfig(
        hidden_size=subnet.embed_dim, num_hidden_layers=subnet.layer_num,
        num_attention_heads=subnet.heads_num[0], intermediate_size=subnet.ffn_embed[0],
        hidden_act=cfg.activation_fn, feat_extract_activation="gelu", layer_norm_eps=LN_EPS,
        feat_extract_norm="group" if cfg.extractor_mode == "default" else "layer",
        conv_dim=list(dims), conv_kernel=list(kernels), conv_stride=list(strides), conv_bias=cfg.conv_bias,
        num_conv_pos_embeddings=cfg.conv_pos, num_conv_pos_embedding_groups=cfg.conv_pos_groups,
        feat_proj_layer_norm=True, do_stable_layer_norm=False,
        # the training run's own dropouts, for fine-tuning; the original never applies attention dropout
        hidden_dropout=cfg.dropout, activation_dropout=cfg.activation_dropout, attention_dropout=0.0,
        feat_proj_dropout=cfg.dropout_input, layerdrop=cfg.encoder_layerdrop,
        # mask_time_* keep HF's fine-tuning SpecAugment defaults (pre-training's 0.65 masking is not for that)
        architectures=["HubertModel"],
    )


def _hf_module_names(model: CompactLightHuBERT) -> Dict[str, str]:
    """Our module path -> HubertModel's, for every module that holds weights (layer indices are the same)."""
    names = {"layer_norm": "feature_projection.layer_norm", "post_extract_proj": "feature_projection.projection",
             "encoder.layer_norm": "encoder.layer_norm", "encoder.pos_conv.0": "encoder.pos_conv_embed.conv"}
    layer_norm_cnn = model.cfg.extractor_mode == "layer_norm"
    for i in range(len(model.cfg.conv_layers)):
        conv = f"feature_extractor.conv_layers.{i}"
        names[f"{conv}.0"] = f"{conv}.conv"
        if layer_norm_cnn or i == 0:
            names[f"{conv}.2.1" if layer_norm_cnn else f"{conv}.2"] = f"{conv}.layer_norm"
    for j in range(model.subnet.layer_num):
        layer = f"encoder.layers.{j}"
        names.update({f"{layer}.self_attn.{p}": f"{layer}.attention.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")})
        names.update({f"{layer}.self_attn_layer_norm": f"{layer}.layer_norm", f"{layer}.final_layer_norm": f"{layer}.final_layer_norm",
                      f"{layer}.fc1": f"{layer}.feed_forward.intermediate_dense", f"{layer}.fc2": f"{layer}.feed_forward.output_dense"})
    return names


def _hf_state_dict(model: CompactLightHuBERT, pos_conv_magnitude: str, pos_conv_direction: str) -> Dict[str, torch.Tensor]:
    """Our weights under HubertModel's names; the positional conv as weight-norm magnitude and direction."""
    names = _hf_module_names(model)
    out: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().float()
        module, _, param = key.rpartition(".")
        if key == "mask_emb":
            out["masked_spec_embed"] = value
        elif key == "encoder.pos_conv.0.weight":
            # HF keeps weight norm over each kernel tap (dim=2): with our weight as the direction and its norm
            # per tap as the magnitude, magnitude * direction / |direction| is our weight again
            out[pos_conv_direction] = value
            out[pos_conv_magnitude] = value.norm(dim=(0, 1), keepdim=True)
        elif module in names:
            out[f"{names[module]}.{param}"] = value
        else:
            raise ExportError(f"weight {key!r} has no HubertModel counterpart")
    return out


@torch.no_grad()
def to_hubert_model(model: CompactLightHuBERT) -> Any:
    """A ``transformers.HubertModel`` (eval mode) computing what ``model`` computes; see the module notes."""
    transformers = _transformers()
    hf = transformers.HubertModel(hubert_config(model.cfg, model.subnet))
    conv = hf.encoder.pos_conv_embed.conv
    prefix = "encoder.pos_conv_embed.conv."
    if hasattr(conv, "parametrizations"):  # torch.nn.utils.parametrizations.weight_norm
        magnitude, direction = prefix + "parametrizations.weight.original0", prefix + "parametrizations.weight.original1"
    else:  # the older torch.nn.utils.weight_norm
        magnitude, direction = prefix + "weight_g", prefix + "weight_v"
    state = _hf_state_dict(model, magnitude, direction)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"HubertModel's weights do not line up with this model's: missing {missing}, "
                          f"unexpected {unexpected}")
    return hf.eval()


def hf_hidden_states(model: Any, input_values: torch.Tensor,
                     attention_mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """A HubertModel's hidden states in this package's convention, padded frames zero.

    Entry 0 is the output of ``model.feature_projection`` (caught with a forward hook), the rest are HF's
    layer outputs. ``attention_mask`` (B, L) is 1 on real samples. For a ``group``-norm CNN with padding,
    each utterance runs alone, since a padded batch changes that CNN's statistics (module notes).
    """
    conv_layers = list(zip(model.config.conv_dim, model.config.conv_kernel, model.config.conv_stride))
    frames = int(conv_output_lengths(torch.tensor(input_values.size(-1)), conv_layers))
    if attention_mask is not None and bool((attention_mask == 0).any()) and model.config.feat_extract_norm == "group":
        alone = [hf_hidden_states(model, input_values[i: i + 1, :n]) for i, n in enumerate(attention_mask.sum(-1).tolist())]
        return [torch.cat([torch.nn.functional.pad(states[k], (0, 0, 0, frames - states[k].size(1))) for states in alone])
                for k in range(len(alone[0]))]
    captured: List[torch.Tensor] = []
    # a copy: HF later edits this tensor in place (zeroes padded frames, masks frames in training)
    hook = model.feature_projection.register_forward_hook(lambda module, args, output: captured.append(output.clone()))
    try:
        out = model(input_values, attention_mask=attention_mask, output_hidden_states=True)
    finally:
        hook.remove()
    states = [captured[0], *out.hidden_states[1:]]
    if attention_mask is None:
        return states
    lengths = conv_output_lengths(attention_mask.sum(-1), conv_layers).to(input_values.device)
    padded = torch.arange(frames, device=input_values.device)[None, :] >= lengths[:, None]
    return [h.masked_fill(padded[..., None], 0.0) for h in states]


def feature_extractor_for(cfg: ModelConfig) -> Any:
    """The ``Wav2Vec2FeatureExtractor`` of an export: 16 kHz, each waveform normalised on its own."""
    return _transformers().Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0, do_normalize=True,
        # HF's convention: a padded batch is meaningful with a mask only for a per-frame (layer_norm) CNN
        return_attention_mask=cfg.extractor_mode == "layer_norm",
    )


@dataclass
class HFExportResult:
    output: Path
    subnet: SubnetConfig
    feat_extract_norm: str
    parameters: int  # as HubertModel counts them
    source_bytes: int
    output_bytes: int

    def summary(self) -> str:
        return "\n".join([
            f"subnet:      {self.subnet.describe()} (HubertModel, feat_extract_norm={self.feat_extract_norm!r})",
            f"parameters:  {self.parameters:,} ({self.parameters / 1e6:.2f}M)",
            f"source file: {describe_size(self.source_bytes)}",
            f"output dir:  {describe_size(self.output_bytes)} -> {self.output}",
            "load with:   HubertModel.from_pretrained(DIR), AutoFeatureExtractor.from_pretrained(DIR)",
            "note:        hidden_states[0] differs by definition (after the positional conv and LayerNorm); "
            "lighthubert_s3prl.model.hf_export.hf_hidden_states gives this package's list",
        ])


def _check_output_dir(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ExportError(f"output {output} is a file; give a directory name for the Hugging Face model")
    if output.is_dir() and any(output.iterdir()):
        if not force:
            raise ExportError(f"output directory {output} already exists and is not empty; pass --force to replace it")
        if not (output / "config.json").is_file():
            # force replaces the whole directory, so only one that looks like an earlier export
            raise ExportError(f"output directory {output} holds no config.json, so it does not look like an earlier "
                              f"export; refusing to replace it even with --force")


def export_hf(ckpt: Union[str, Path], subnet: Any = None, output_dir: Union[str, Path] = "hubert-hf",
              force: bool = False) -> HFExportResult:
    """Write ``subnet`` of ``ckpt`` as a Hugging Face HubertModel directory at ``output_dir``, atomically."""
    _transformers()
    output, source = Path(output_dir), Path(ckpt)
    _check_output_dir(output, force)
    loaded = load_checkpoint(source)
    chosen = loaded.subnet(subnet)
    check_hf_compatible(loaded.model_cfg, chosen)  # before the slicing work
    model = CompactLightHuBERT.from_checkpoint(loaded, chosen)
    hf = to_hubert_model(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target and renamed into place, so the output is either complete or absent
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    old = None
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        feature_extractor_for(model.cfg).save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give what a plain mkdir would
        if output.is_dir() and any(output.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            os.replace(output, old)
        os.replace(tmp, output)  # replaces an empty directory too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not output.exists():
            os.replace(old, output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return HFExportResult(
        output=output, subnet=chosen, feat_extract_norm=hf.config.feat_extract_norm,
        parameters=sum(p.numel() for p in hf.parameters()), source_bytes=source.stat().st_size,
        output_bytes=sum(f.stat().st_size for f in output.iterdir() if f.is_file()),
    )
