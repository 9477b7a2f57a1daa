"""The image-text-to-text backbone: loading (Auto classes, local files only), layer access."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path

import torch
from torch import nn
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


class StaticFeatures(nn.Module):
    """``layer_hidden_states`` for one fixed image grid, traceable whole by ``torch.compile``.

    Qwen2.5-VL's forward derives its vision layout (rotary positions, attention windows, their
    lengths) from ``image_grid_thw`` with ``.tolist()`` / ``.item()`` and loops, and
    ``layer_hidden_states`` stops the text stack with an exception from a hook: each is a
    graph break. A fixed camera setup makes all of that constant, so it is computed here once
    (buffers and Python ints) and :meth:`forward` runs the same modules on tensors alone.
    ``position_ids`` (M-RoPE, ``[3, B, T]``) come with the inputs: they depend on the prompt's
    layout, which the caller knows (``model.model.get_rope_index``).
    """

    def __init__(self, model, layer: int, image_grid_thw: torch.Tensor):
        super().__init__()
        from transformers.vision_utils import (
            get_vision_attention_seqlens,
            get_vision_position_ids,
            get_vision_window_index,
        )

        kind = getattr(model.config, "model_type", None)
        if kind != "qwen2_5_vl":
            raise NotImplementedError(f"StaticFeatures supports Qwen2.5-VL backbones, not {kind}")
        self.model, self.layer = model, layer
        visual = model.model.visual
        grid = image_grid_thw.to(visual.device)
        self.grid = tuple(tuple(int(v) for v in row) for row in grid.tolist())
        cu_full, _ = get_vision_attention_seqlens(grid, visual.config)
        window, cu_window = get_vision_window_index(grid, visual.spatial_merge_size,
                                                    visual.window_size, visual.patch_size)
        self.full_sizes = tuple(cu_full.diff().tolist())      # attention segments (images)
        self.window_sizes = tuple(cu_window.diff().tolist())  # attention windows
        window = window.to(visual.device)
        n = int(cu_full[-1])
        positions = get_vision_position_ids(grid, visual.spatial_merge_size)
        cos, sin = (visual.permute_input_for_window_attn(f, window, n)
                    for f in visual.rotary_pos_emb(torch.empty(0, device=visual.device),
                                                   positions.to(visual.device)))
        self.register_buffer("window_index", window, persistent=False)
        self.register_buffer("reverse_index", torch.argsort(window), persistent=False)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def vision(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The merged image tokens ``[N, hidden]`` (Qwen2.5-VL's ``get_image_features``)."""
        visual = self.model.model.visual
        h = visual.patch_embed(pixel_values.type(visual.dtype))
        h = visual.permute_input_for_window_attn(h, self.window_index, h.shape[0])
        for i, block in enumerate(visual.blocks):
            sizes = self.full_sizes if i in visual.fullatt_block_indexes else self.window_sizes
            h = h + self._attention(block.attn, block.norm1(h), sizes)
            h = h + block.mlp(block.norm2(h))
        return visual.merger(h)[self.reverse_index]

    def _attention(self, attn, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        # Qwen2_5_VLVisionAttention's non-flash branch, with the segment lengths as constants
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            apply_rotary_pos_emb_vision,
            eager_attention_forward,
        )

        n = x.shape[0]
        q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, self.cos, self.sin)
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                          eager_attention_forward)
        out = [interface(attn, *qkv, attention_mask=None, scaling=attn.scaling, dropout=0.0,
                         is_causal=False)[0]
               for qkv in zip(*(t.split(sizes, dim=2) for t in (q, k, v)))]
        return attn.proj(torch.cat(out, dim=1).reshape(n, -1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, T, hidden]`` after decoder layer ``self.layer``."""
        from transformers.masking_utils import (
            create_causal_mask,
            create_sliding_window_causal_mask,
        )

        text = self.model.model.language_model
        embeds = text.embed_tokens(input_ids)
        # the image tokens' embeddings, in order (masked_scatter as a gather: no host sync)
        image = input_ids == self.model.config.image_token_id
        index = (image.flatten().cumsum(0) - 1).clamp(min=0).view_as(image)
        vision = self.vision(pixel_values).to(embeds.dtype)
        embeds = torch.where(image[..., None], vision[index], embeds)
        args = {"config": text.config, "inputs_embeds": embeds, "attention_mask": attention_mask,
                "past_key_values": None}
        masks = {"full_attention": create_causal_mask(**args)}
        if text.has_sliding_layers:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**args)
        rope = text.rotary_emb(embeds, position_ids)
        hidden = embeds
        for i, layer in enumerate(text.layers[:self.layer]):
            hidden = layer(hidden, attention_mask=masks[text.config.layer_types[i]],
                           position_embeddings=rope)
        return hidden
