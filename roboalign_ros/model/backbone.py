"""The image-text-to-text backbone: loading (Auto classes, local files only), layer access."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

from .config import BackboneNotFoundError, CheckpointError
from .reasoning import ACTION_END, ACTION_START, action_token_strings


class ImageOnlyQwenVLProcessor(Qwen2_5_VLProcessor):
    """Qwen2/2.5-VL processor without the video processor.

    transformers 5 cannot build the stock processor without torchvision (its video processor
    needs it). Images are all a policy needs, so this subclass keeps the image processor,
    tokenizer and chat template and behaves the same for ``images=`` / ``text=`` calls.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def resolve_backbone_path(name_or_path: str | os.PathLike) -> Path:
    """Find a backbone on this machine: a local directory, or a repo id in the local HF cache.

    Raises :class:`BackboneNotFoundError` naming every place looked at and how to provide it.
    Nothing is downloaded.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneNotFoundError(f"backbone directory {path} has no config.json")
        return path
    looked = [f"local directory {path.resolve()} (does not exist)"]
    name = str(name_or_path)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from huggingface_hub import constants, snapshot_download

        try:
            return Path(snapshot_download(name, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not in the cache"
            looked.append(f"Hugging Face cache {constants.HF_HUB_CACHE} (no snapshot of {name})")
    raise BackboneNotFoundError(
        f"backbone {name!r} not found; looked in: {'; '.join(looked)}. Nothing is downloaded "
        f"at run time: run `hf download {name}` on a machine with internet and copy the HF "
        "cache (or set HF_HOME), or pass a local directory as VLAConfig.backbone / "
        "VLAPolicy.from_pretrained(..., backbone=DIR)."
    )


def load_processor(path: str | os.PathLike, trust_remote_code: bool = False):
    """Load the processor saved in ``path``; falls back to the image-only Qwen-VL processor."""
    path = Path(path)
    cfg_file = path / "processor_config.json"
    cls_name = ""
    if cfg_file.is_file():
        try:
            cls_name = json.loads(cfg_file.read_text()).get("processor_class", "")
        except ValueError as exc:
            raise CheckpointError(f"bad processor config {cfg_file}: {exc}") from exc
    if cls_name != ImageOnlyQwenVLProcessor.__name__:
        try:
            return AutoProcessor.from_pretrained(path, local_files_only=True,
                                                 trust_remote_code=trust_remote_code)
        except ImportError:
            if "Qwen2" not in cls_name and "qwen2" not in _model_type(path):
                raise
    return ImageOnlyQwenVLProcessor.from_pretrained(path, local_files_only=True)


def _model_type(path: Path) -> str:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError):
        return ""


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto"/None -> bf16 on CUDA, float32 elsewhere; strings -> torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def resolve_attention(attn: str, device: torch.device) -> str:
    """"auto" -> flash_attention_2 on CUDA when flash-attn is installed, else sdpa."""
    if attn != "auto":
        return attn
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_backbone(name_or_path: str | os.PathLike, device: torch.device, dtype: torch.dtype,
                  attn_implementation: str = "auto", trust_remote_code: bool = False):
    """Load ``(model, processor)`` with the Auto classes from local files only."""
    path = resolve_backbone_path(name_or_path)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code,
            attn_implementation=resolve_attention(attn_implementation, device),
        )
        processor = load_processor(path, trust_remote_code)
    except BackboneNotFoundError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"could not load backbone from {path}: {exc}") from exc
    return model.to(device).eval(), processor


def text_config(model):
    """The language-model part of the backbone config."""
    return model.config.get_text_config()


def add_action_tokens(model, tokenizer, num_action_tokens: int) -> dict:
    """Add ``<ACTION_START>``, ``<ACTION_END>``, ``<ACT_0..n-1>`` to the vocabulary (idempotent).

    New tokens are special (never split, kept verbatim when decoding); the embedding matrix is
    resized (new rows: mean of the old ones) when the tokenizer outgrows it. Returns
    ``{"action_start": id, "action_end": id, "actions": LongTensor[n] of MLLM ids}``.
    """
    new = [ACTION_START, ACTION_END, *action_token_strings(num_action_tokens)]
    vocab = tokenizer.get_vocab()
    missing = [t for t in new if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    ids = tokenizer.convert_tokens_to_ids(new)
    return {"action_start": ids[0], "action_end": ids[1],
            "actions": torch.tensor(ids[2:], dtype=torch.long)}


def decoder_layers(model):
    """The language model's list of decoder layers, or None if it cannot be found."""
    for getter in (lambda m: m.model.language_model.layers, lambda m: m.language_model.layers,
                   lambda m: m.model.language_model.model.layers,
                   lambda m: m.get_decoder().layers):
        try:
            layers = getter(model)
        except AttributeError:
            continue
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    return None


class _EarlyExit(Exception):
    def __init__(self, hidden):
        self.hidden = hidden


def layer_hidden_states(model, inputs: dict, layer: int) -> torch.Tensor:
    """``hidden_states[layer]`` (layer >= 1) of a forward pass over ``inputs``.

    The layers above it and the LM head are not run: a forward hook on decoder layer
    ``layer - 1`` stops the pass. Falls back to ``output_hidden_states`` for unknown models.
    """
    layers = decoder_layers(model)
    if layers is None:
        out = model(**inputs, output_hidden_states=True, use_cache=False)
        return out.hidden_states[layer]

    caller = threading.get_ident()

    def hook(_module, _args, output):
        # only this call stops early: a generation on another thread (the reasoning path)
        # runs the same module at the same time
        if threading.get_ident() == caller:
            raise _EarlyExit(output[0] if isinstance(output, tuple) else output)

    handle = layers[layer - 1].register_forward_hook(hook)
    try:
        model(**inputs, use_cache=False)
    except _EarlyExit as stop:
        return stop.hidden
    finally:
        handle.remove()
    raise RuntimeError("backbone forward finished without reaching the feature layer")
