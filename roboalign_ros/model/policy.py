"""The VLA policy: backbone + action tokenizer + reasoning format + flow-matching head.

Inference: ``VLAPolicy.from_pretrained(dir).predict(Observation(...)) -> PolicyOutput``, or
the two paths separately, as a robot serves them (``roboalign_ros.serving``): ``reason(obs) ->
Reasoning`` (generation, slow) and ``act(obs, reasoning) -> PolicyOutput`` (features + head,
never generating).

What training uses (all documented on the methods):

* ``policy.backbone`` / ``policy.processor`` / ``policy.tokenizer`` / ``policy.head`` /
  ``policy.action_tokenizer`` / ``policy.normalizer`` / ``policy.token_ids``;
* ``policy.encode_observation(obs_or_list, suffix)`` -> processor inputs on the device;
* ``policy.format_target(reasoning, chunk=..., action_token_ids=...)`` -> SFT target text,
  ``policy.sft_inputs(obs, reasoning, chunk)`` -> inputs with ``labels`` (prompt masked);
* ``policy.backbone_features(inputs)`` -> (hidden states of the feature layer, mask);
* ``policy.head.loss(features, state_normalized, chunk_normalized, feature_mask)``.

``policy.compile_action_path()`` (or ``VLAConfig.compile_action_path``, applied by ``warmup``)
runs the action path's features + head as one ``torch.compile`` graph: :class:`ActionCore`.

Checkpoint directory layout (``save_pretrained``)::

    vla_config.json  normalization.json  head.safetensors
    action_tokenizer/{action_tokenizer.json, tokenizer.json}
    backbone/{config.json, model*.safetensors, tokenizer + processor files}
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import backbone as bb
from .action_tokenizer import ActionTokenizer, load_action_tokenizer
from .config import CheckpointError, VLAConfig, default_feature_layer
from .head import FlowMatchingHead
from .normalization import Normalizer
from .reasoning import (
    ANSWER_END,
    ANSWER_START,
    THINK_END,
    THINK_START,
    ParsedGeneration,
    parse_generation,
)
from .reasoning import format_target as _format_target

log = logging.getLogger(__name__)

HEAD_WEIGHTS = "head.safetensors"
BACKBONE_DIR = "backbone"
ACTION_TOKENIZER_DIR = "action_tokenizer"


@dataclass
class Observation:
    """One policy input: camera images (name -> HxWx3 uint8), proprioception, instruction."""

    images: dict[str, np.ndarray]
    state: np.ndarray | None
    instruction: str


@dataclass(frozen=True)
class Reasoning:
    """One finished generation: the reasoning (and FAST tokens) an action may condition on."""

    parsed: ParsedGeneration
    text: str               # generated text, from ``<think>``
    instruction: str        # the instruction it was generated for
    seconds: float = 0.0    # generation time (preprocessing included)

    @property
    def reasoning(self) -> str | None:
        """The reasoning text (the four sections), None if the generation had none."""
        return self.parsed.reasoning


@dataclass
class PolicyOutput:
    """One policy output.

    ``chunk``: float32 [horizon, action_dim] in robot units. ``reasoning``: latest reasoning
    text (possibly cached from an earlier call, see ``reasoning_fresh``), None when reasoning is
    off. ``action_tokens``: local action-token indices of the latest generation. ``problems``:
    everything the parser / decoder had to repair. ``timings``: seconds per stage + "total".
    """

    chunk: np.ndarray
    reasoning: str | None = None
    action_tokens: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    reasoning_fresh: bool = False
    generated_text: str | None = None


class ActionCore(torch.nn.Module):
    """The compilable core of :meth:`VLAPolicy.act`: features, then the head's Euler loop.

    Inputs are tensors of fixed shapes for a fixed camera setup (the prompt padded to a fixed
    length, see :meth:`VLAPolicy.action_core_inputs`); the noise comes in, so no generator is
    traced. No host-device sync, no data-dependent branch: ``torch.compile(fullgraph=True)``
    captures it as one graph, and CUDA graphs can replay it.
    """

    def __init__(self, features: bb.StaticFeatures, head: FlowMatchingHead, num_steps: int):
        super().__init__()
        self.features, self.head = features, head
        timesteps, sigmas = head.schedule(num_steps)
        self.register_buffer("timesteps", timesteps, persistent=False)
        self.register_buffer("sigmas", sigmas, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, pixel_values: torch.Tensor,
                state: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """The normalized chunk ``[B, horizon, action_dim]`` (float32)."""
        features = self.features(input_ids, attention_mask, position_ids, pixel_values)
        context, bias = self.head.encode_context(features, attention_mask)
        return self.head.denoise(noise, context, bias, state, self.timesteps, self.sigmas)


class VLAPolicy:
    """Reasoning VLA policy. Build with :meth:`build` or :meth:`from_pretrained`."""

    def __init__(self, config: VLAConfig, backbone, processor, head: FlowMatchingHead,
                 action_tokenizer: ActionTokenizer, normalizer: Normalizer):
        self.config = config
        self.backbone, self.processor, self.head = backbone, processor, head
        self.tokenizer = processor.tokenizer
        self.action_tokenizer, self.normalizer = action_tokenizer, normalizer
        self.device = next(backbone.parameters()).device
        self.dtype = next(backbone.parameters()).dtype
        self.token_ids = bb.add_action_tokens(backbone, self.tokenizer, action_tokenizer.vocab_size)
        num_layers = bb.text_config(backbone).num_hidden_layers
        self.feature_layer = config.feature_layer or default_feature_layer(num_layers)
        if self.feature_layer > num_layers:
            raise ValueError(f"VLAConfig.feature_layer {self.feature_layer} > backbone layers "
                             f"{num_layers}")
        self._generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self._special_texts = sorted(
            {t for t in self.tokenizer.all_special_tokens
             + [a.content for a in self.tokenizer.added_tokens_decoder.values()]
             if t.startswith("<|")}, key=len, reverse=True)
        self._calls = 0
        self._cache: Reasoning | None = None  # the newest generation of predict()
        self._core: ActionCore | None = None
        self._core_fn = None  # the compiled core act() runs; None: the eager path
        self._core_tokens = 0
        if config.head.keypoints > 0:
            self.head.set_token_grid(self.token_grid())
        if self.device.type == "cuda" and config.compile_head:
            self.head.compile_sampler(mode="reduce-overhead")

    # ------------------------------------------------------------------ construction / IO
    @classmethod
    def build(cls, config: VLAConfig, backbone, processor, action_tokenizer: ActionTokenizer,
              normalizer: Normalizer | None = None) -> VLAPolicy:
        """A policy with a freshly initialised head (seeded by ``config.seed``)."""
        if (action_tokenizer.horizon, action_tokenizer.action_dim) != (config.horizon,
                                                                       config.action_dim):
            raise ValueError("action tokenizer (horizon, action_dim) differs from VLAConfig")
        torch.manual_seed(config.seed)
        params = next(backbone.parameters())
        head = FlowMatchingHead(config.head, config.horizon, config.action_dim, config.state_dim,
                                bb.text_config(backbone).hidden_size)
        head.to(device=params.device, dtype=params.dtype).eval()
        return cls(config, backbone, processor, head, action_tokenizer, normalizer or Normalizer())

    def save_pretrained(self, directory: str | Path, save_backbone: bool = True) -> Path:
        """Write the checkpoint (safetensors + JSON only).

        ``save_backbone=False`` stores only the head, tokenizers and stats; the backbone is
        then found via ``config.backbone`` (or ``from_pretrained(..., backbone=...)``).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        self.normalizer.save(directory)
        self.action_tokenizer.save_pretrained(directory / ACTION_TOKENIZER_DIR)
        state = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(state, directory / HEAD_WEIGHTS, metadata={"format": "pt"})
        if save_backbone:
            self.backbone.save_pretrained(directory / BACKBONE_DIR)
            self.processor.save_pretrained(directory / BACKBONE_DIR)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None,
                        backbone: str | Path | None = None) -> VLAPolicy:
        """Load a checkpoint directory written by :meth:`save_pretrained`.

        ``device``: default CUDA when available. ``dtype``: default ``config.dtype`` ("auto":
        bf16 on CUDA, float32 on CPU). ``backbone``: override where the backbone is loaded from
        (default ``DIR/backbone`` if present, else ``config.backbone``). Missing or bad files
        raise :class:`CheckpointError` naming the file; a backbone that is nowhere on this
        machine raises :class:`BackboneNotFoundError`.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint directory does not exist: {directory}")
        config = VLAConfig.load(directory)
        normalizer = Normalizer.load(directory)
        action_tokenizer = load_action_tokenizer(directory / ACTION_TOKENIZER_DIR)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = bb.resolve_dtype(dtype or config.dtype, device)
        source = backbone or (directory / BACKBONE_DIR if (directory / BACKBONE_DIR).is_dir()
                              else config.backbone)
        model, processor = bb.load_backbone(source, device, dtype, config.attn_implementation,
                                            config.trust_remote_code)
        head_file = directory / HEAD_WEIGHTS
        if not head_file.is_file():
            raise CheckpointError(f"missing head weights file: {head_file}")
        try:
            state = load_file(head_file)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"bad head weights file {head_file}: {exc}") from exc
        head = FlowMatchingHead(config.head, config.horizon, config.action_dim, config.state_dim,
                                bb.text_config(model).hidden_size)
        try:
            head.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"head weights in {head_file} do not match the config: "
                                  f"{str(exc)[:300]}") from exc
        head.to(device=device, dtype=dtype).eval()
        return cls(config, model, processor, head, action_tokenizer, normalizer)

    # ------------------------------------------------------------------ training interface
    def prompt_messages(self, instruction: str) -> list[dict]:
        """Chat messages of the user turn: one image entry per camera, then the prompt text."""
        content = [{"type": "image"} for _ in self.config.camera_names]
        content.append({"type": "text",
                        "text": self.config.prompt_template.format(instruction=instruction)})
        return [{"role": "user", "content": content}]

    def prompt_text(self, instruction: str) -> str:
        """Chat-formatted prompt up to and including the assistant's opening ``<think>``."""
        return self.processor.apply_chat_template(
            self.prompt_messages(instruction), tokenize=False, add_generation_prompt=True
        ) + THINK_START

    def _images(self, obs: Observation) -> list[np.ndarray]:
        images = []
        for name in self.config.camera_names:
            img = obs.images[name]
            if self.config.image_size and img.shape[:2] != self.config.image_size:
                from PIL import Image

                h, w = self.config.image_size
                img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
            images.append(img)
        return images

    def encode_observation(self, obs: Observation | list[Observation],
                           suffix: str | list[str] = ""):
        """Processor inputs (on the policy device) for one observation or a batch.

        The sequence is the tokenized ``prompt_text(instruction)`` (ending in ``<think>``)
        followed by the separately tokenized ``suffix`` (so a generation prompt is always an
        exact token prefix of the training sequence that continues it): ``suffix=""`` is the
        generation prompt, ``feature_suffix(reasoning)`` the head's conditioning context, and
        an SFT target minus its leading ``<think>`` a training sequence (see :meth:`sft_inputs`).
        Batches are padded on the right.
        """
        return self._encode(obs, suffix)[0]

    def _encode(self, obs, suffix):
        batch = obs if isinstance(obs, list) else [obs]
        suffixes = suffix if isinstance(suffix, list) else [suffix] * len(batch)
        if len(suffixes) != len(batch):
            raise ValueError("suffix list length differs from the observation list")
        for o in batch:
            self.check_observation(o)
        texts = [self.prompt_text(o.instruction) for o in batch]
        images = [img for o in batch for img in self._images(o)]
        self.tokenizer.padding_side = "right"
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        mask = inputs["attention_mask"]
        lengths = mask.sum(dim=1).tolist()
        if any(suffixes):
            extra = [self.tokenizer(s, add_special_tokens=False)["input_ids"] if s else []
                     for s in suffixes]
            total = max(n + len(e) for n, e in zip(lengths, extra))
            for key, value in list(inputs.items()):
                if not (torch.is_tensor(value) and value.shape[:2] == mask.shape):
                    continue
                fill = self.tokenizer.pad_token_id if key == "input_ids" else 0
                new = value.new_full((len(batch), total), fill)
                for i, (n, e) in enumerate(zip(lengths, extra)):
                    new[i, :n] = value[i, :n]
                    if key == "input_ids":
                        new[i, n:n + len(e)] = torch.tensor(e, dtype=value.dtype)
                    elif key == "attention_mask":
                        new[i, n:n + len(e)] = 1
                inputs[key] = new
        return inputs.to(self.device), lengths

    def token_grid(self) -> torch.Tensor:
        """Where each prompt token sits in the images: ``[T, 5]``.

        Image tokens get ``(camera index, x, y, cell width, cell height)``, x and y in [-1, 1]
        across that camera's grid of merged patches (row-major, as Qwen2.5-VL lays them out);
        text gets ``(-1, 0, 0, 0, 0)``. The layout is fixed by the processor, the camera list
        and ``image_size``; text the head reads (reasoning) follows it.
        """
        inputs = self.encode_observation(self._blank_observation("layout"))
        ids = inputs["input_ids"][0].cpu()
        image_id = getattr(self.backbone.config, "image_token_id", None)
        grid = torch.zeros(len(ids), 5)
        grid[:, 0] = -1
        if image_id is None or "image_grid_thw" not in inputs:
            return grid
        merge = getattr(self.processor.image_processor, "merge_size", 2)
        where = (ids == image_id).nonzero()[:, 0].tolist()
        start = 0
        for cam, (t, gh, gw) in enumerate(inputs["image_grid_thw"].cpu().tolist()):
            rows, cols = gh // merge, gw // merge
            n = t * rows * cols
            idx = torch.tensor(where[start:start + n])
            k = torch.arange(n) % (rows * cols)
            grid[idx, 0] = cam
            grid[idx, 1] = (k % cols).float() / max(cols - 1, 1) * 2 - 1
            grid[idx, 2] = (k // cols).float() / max(rows - 1, 1) * 2 - 1
            grid[idx, 3] = 2 / max(cols - 1, 1)
            grid[idx, 4] = 2 / max(rows - 1, 1)
            start += n
        return grid

    def feature_suffix(self, reasoning: str | None) -> str:
        """Text appended to the prompt for the head's context: ``{reasoning}</think><answer>``.

        Special tokens a (badly trained) model may have written into its reasoning, such as
        ``<|image_pad|>``, are removed: re-tokenized, they would claim image features that the
        prompt does not have.
        """
        text = (reasoning or "").strip()
        for token in self._special_texts:
            text = text.replace(token, "")
        return f"{text}{THINK_END}{ANSWER_START}"

    def format_target(self, reasoning: str | None, chunk: np.ndarray | None = None,
                      action_token_ids=None) -> str:
        """SFT target text ``<think>r</think><answer><ACTION_START>..<ACTION_END></answer>``.

        Give either ``chunk`` (robot units [H, D]; normalized and tokenized here) or the local
        ``action_token_ids`` directly.
        """
        if action_token_ids is None:
            if chunk is None:
                raise ValueError("format_target needs chunk or action_token_ids")
            action_token_ids = self.tokenize_chunk(chunk)
        return _format_target(reasoning, action_token_ids)

    def tokenize_chunk(self, chunk: np.ndarray) -> list[int]:
        """Robot-unit chunk [H, D] -> local action-token indices."""
        return self.action_tokenizer.encode(self.normalizer.normalize("action", chunk))

    def sft_inputs(self, obs: Observation | list[Observation], reasoning, chunk):
        """Model inputs with ``labels`` for SFT: loss only on the assistant answer.

        ``reasoning`` / ``chunk`` are single values or lists matching ``obs``. The labels
        cover the reasoning, the action tokens, the closing tags and the end-of-turn token.
        (A training loop can split reasoning / action losses by checking
        ``labels`` against ``policy.token_ids["actions"]``.)
        """
        batch = obs if isinstance(obs, list) else [obs]
        reasonings = reasoning if isinstance(reasoning, list) else [reasoning] * len(batch)
        chunks = chunk if isinstance(chunk, list) else [chunk]
        if not len(batch) == len(reasonings) == len(chunks):
            raise ValueError("sft_inputs: obs, reasoning and chunk lists differ in length")
        eos = self.tokenizer.eos_token or ""
        suffixes = [self.format_target(r, c)[len(THINK_START):] + eos
                    for r, c in zip(reasonings, chunks)]
        inputs, prompt_lengths = self._encode(batch, suffixes)
        labels = inputs["input_ids"].clone()
        labels[inputs["attention_mask"] == 0] = -100
        for i, n in enumerate(prompt_lengths):
            labels[i, :n] = -100
        inputs["labels"] = labels
        return inputs

    @torch.no_grad()
    def backbone_features(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of ``self.feature_layer`` for processor inputs.

        Returns ``(features [B, T, hidden], mask [B, T])``. The backbone runs only up to that
        layer. Feed them to ``head.loss`` / ``head.sample`` with ``feature_mask=mask``.
        """
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        hidden = bb.layer_hidden_states(self.backbone, model_inputs, self.feature_layer)
        return hidden, inputs["attention_mask"]

    # ------------------------------------------------------------------ inference
    def check_observation(self, obs: Observation) -> None:
        """Raise ValueError naming the bad field of ``obs``."""
        if not isinstance(obs.instruction, str) or not obs.instruction.strip():
            raise ValueError("Observation.instruction must be a non-empty string")
        for name in self.config.camera_names:
            img = obs.images.get(name) if isinstance(obs.images, dict) else None
            if img is None:
                raise ValueError(f"Observation.images is missing camera {name!r}")
            if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
                    and img.shape[2] == 3):
                raise ValueError(f"Observation.images[{name!r}] must be HxWx3 uint8, got "
                                 f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}")
        if self.config.state_dim:
            state = None if obs.state is None else np.asarray(obs.state)
            if state is None or state.shape != (self.config.state_dim,) or \
                    not np.all(np.isfinite(state)):
                raise ValueError(f"Observation.state must be finite with shape "
                                 f"({self.config.state_dim},), got {getattr(state, 'shape', None)}")

    @torch.no_grad()
    def generate(self, inputs, max_new_tokens: int | None = None) -> tuple[ParsedGeneration, str]:
        """Greedy generation of reasoning + action tokens from ``encode_observation`` inputs.

        Returns the parse and the generated text (starting with ``<think>``).
        """
        ends = [self.token_ids["action_end"]]
        eos = self.backbone.generation_config.eos_token_id
        ends += list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        kwargs = {}
        if self.device.type == "cuda" and self.config.static_cache:
            kwargs["cache_implementation"] = "static"
        out = self.backbone.generate(
            **inputs, max_new_tokens=max_new_tokens or self.config.max_new_tokens,
            do_sample=False, eos_token_id=ends, pad_token_id=self.tokenizer.pad_token_id,
            **kwargs)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        stripped = [t for t in new if t not in ends[1:] and t != self.tokenizer.pad_token_id]
        text = THINK_START + self.tokenizer.decode(stripped, skip_special_tokens=False)
        if new and new[-1] == self.token_ids["action_end"]:
            text += ANSWER_END  # stopped on <ACTION_END>: the closing tag is implied
        return parse_generation(text, self.action_tokenizer.vocab_size), text

    def warmup(self, calls: int = 2, reasoning: bool = True) -> None:
        """Run ``predict`` on a blank observation (compiles / captures CUDA graphs), then reset.

        ``reasoning=False`` warms the action path alone (:meth:`act`, no generation). With
        ``config.compile_action_path`` the action path is compiled first, and at least 3 calls
        run (compile, CUDA-graph warm-up, capture).
        """
        if self.config.compile_action_path and self._core_fn is None \
                and self.config.action_source == "head":
            self.compile_action_path()
        if self._core_fn is not None:
            calls = max(calls, 3)
        obs = self._blank_observation("warm up")
        for _ in range(calls):
            if reasoning:
                self.predict(obs, seed=0)
            else:
                self.act(obs, seed=0)
        self.reset()

    def reset(self) -> None:
        """Forget the cached reasoning and the call counter (e.g. at a new episode)."""
        self._calls, self._cache = 0, None

    def reasoning_due(self, instruction: str) -> bool:
        """Whether :meth:`predict` generates on its next call.

        Every ``reasoning_every`` calls, and whenever the instruction changes.
        """
        n = self.config.reasoning_every
        return bool(n) and (self._calls % n == 0 or self._cache is None
                            or self._cache.instruction != instruction)

    @torch.no_grad()
    def predict(self, observation: Observation, seed: int | None = None) -> PolicyOutput:
        """Run the policy on one observation: :meth:`reason` when due, then :meth:`act`.

        Reasoning is generated on calls ``0, N, 2N, ...`` (``config.reasoning_every = N``) or
        when the instruction changes, and reused in between; 0 disables it. ``seed`` makes the
        head's noise (and thus the chunk) reproducible; otherwise the policy's generator runs on.
        The action path waits for the generation here; a robot serves the two apart
        (``serving.ReasoningWorker``).
        """
        t_start = time.perf_counter()
        self.check_observation(observation)
        fresh = self.reasoning_due(observation.instruction)
        if fresh:
            self._cache = self.reason(observation)
        self._calls += 1
        out = self.act(observation, self._cache if self.config.reasoning_every else None, seed,
                       fresh=fresh)
        out.timings["total"] = time.perf_counter() - t_start
        return out

    @torch.no_grad()
    def reason(self, observation: Observation) -> Reasoning:
        """Generate the reasoning and the FAST action tokens for ``observation`` (the slow path).

        Safe to call from another thread while :meth:`act` runs: neither changes the model.
        """
        self.check_observation(observation)
        t0 = time.perf_counter()
        parsed, text = self.generate(self.encode_observation(observation))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return Reasoning(parsed, text, observation.instruction, time.perf_counter() - t0)

    @torch.no_grad()
    def act(self, observation: Observation, reasoning: Reasoning | None = None,
            seed: int | None = None, fresh: bool = False) -> PolicyOutput:
        """The action path: a chunk for ``observation``, conditioned on ``reasoning``.

        It never generates. ``reasoning``: the newest finished one (None: none yet, or
        reasoning off); the head reads its text when ``config.head_context`` is "reasoning",
        and ``action_source: tokens`` decodes its FAST tokens (with None: an empty chunk's
        problems). ``fresh`` marks the output's reasoning as generated for this call. After
        :meth:`compile_action_path` features and head run as one compiled graph (timed as
        "features_head" instead of "features" and "head").
        """
        cfg, timings = self.config, {}
        t_start = time.perf_counter()

        @contextmanager
        def timed(name):
            t0 = time.perf_counter()
            yield
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

        self.check_observation(observation)
        parsed = reasoning.parsed if reasoning is not None else None
        if fresh and reasoning is not None:
            timings["generate"] = reasoning.seconds
        text = reasoning.reasoning if reasoning is not None else None
        problems = list(parsed.problems) if parsed and fresh else []

        if cfg.action_source == "tokens":
            with timed("decode_tokens"):
                result = self.action_tokenizer.decode(parsed.action_tokens if parsed else [])
                chunk_n, problems = result.chunk, problems + result.problems
        else:
            compiled = self._core_fn is not None
            with timed("preprocess"):
                context = text if cfg.head_context == "reasoning" else None
                inputs = self.encode_observation(observation, self.feature_suffix(context))
                if compiled:
                    args = self._core_args(inputs, observation, seed)
            if compiled:
                with timed("features_head"):  # one graph
                    chunk_n = self._core_fn(*args)[0].float().cpu().numpy()
            else:
                with timed("features"):
                    features, mask = self.backbone_features(inputs)
                    if self.head._compiled is not None:  # few distinct shapes -> few CUDA graphs
                        pad = -features.shape[1] % 64
                        features = torch.nn.functional.pad(features, (0, 0, 0, pad))
                        mask = torch.nn.functional.pad(mask, (0, pad))
                with timed("head"):
                    chunk_n = self.head.sample(features, self._state(observation), mask,
                                               generator=self._noise_source(seed))[0]
                    chunk_n = chunk_n.float().cpu().numpy()
        chunk = self.normalizer.unnormalize("action", chunk_n).astype(np.float32)
        if not np.all(np.isfinite(chunk)):
            problems.append("chunk has non-finite values")
        timings["total"] = time.perf_counter() - t_start + timings.get("generate", 0.0)
        return PolicyOutput(chunk=chunk, reasoning=text,
                            action_tokens=list(parsed.action_tokens) if parsed else [],
                            problems=problems, timings=timings, reasoning_fresh=fresh,
                            generated_text=reasoning.text if reasoning is not None else None)

    def _state(self, observation: Observation) -> torch.Tensor | None:
        if not self.config.state_dim:
            return None
        return torch.as_tensor(self.normalizer.normalize("state", observation.state),
                               device=self.device)[None]

    def _noise_source(self, seed: int | None) -> torch.Generator:
        return self._generator if seed is None else \
            torch.Generator(device=self.device).manual_seed(seed)

    # ------------------------------------------------------------------ compiled action path
    def action_core(self) -> ActionCore:
        """The compilable core of :meth:`act` (eager; built on first use for this camera setup).

        Its inputs: :meth:`action_core_inputs`. :meth:`compile_action_path` compiles it.
        """
        if self._core is None:
            if self.config.action_source != "head":
                raise ValueError("the action path has no head to compile: action_source is "
                                 f"{self.config.action_source!r}")
            if not self.config.image_size:
                raise ValueError("a compiled action path needs a fixed camera setup: set "
                                 "VLAConfig.image_size")
            inputs = self.encode_observation(self._blank_observation("x"),
                                             self.feature_suffix(None))
            # a one-token instruction's prompt, room for 32 more instruction tokens and for the
            # longest reasoning when the head reads it; rounded up, so a little more fits
            cfg, n = self.config, inputs["input_ids"].shape[1]
            reasoning = cfg.max_new_tokens if cfg.head_context == "reasoning" else 0
            self._core_tokens = _round_up(n + 32 + reasoning)
            features = bb.StaticFeatures(self.backbone, self.feature_layer,
                                         inputs["image_grid_thw"])
            self._core = ActionCore(features, self.head, cfg.head.num_steps)
        return self._core

    def action_core_inputs(self, observation: Observation, reasoning: Reasoning | None = None,
                           seed: int | None = None) -> tuple:
        """The arguments of :meth:`action_core` for one observation, as :meth:`act` makes them."""
        self.action_core()
        self.check_observation(observation)
        text = reasoning.reasoning if reasoning is not None else None
        context = text if self.config.head_context == "reasoning" else None
        inputs = self.encode_observation(observation, self.feature_suffix(context))
        return self._core_args(inputs, observation, seed)

    def _core_args(self, inputs, observation: Observation, seed: int | None) -> tuple:
        """Processor inputs padded on the right to the fixed length, M-RoPE positions, noise."""
        grid = tuple(tuple(row) for row in inputs["image_grid_thw"].tolist())
        if grid != self._core.features.grid:
            raise ValueError(f"image grid {grid} differs from the compiled camera setup "
                             f"{self._core.features.grid}")
        n = inputs["input_ids"].shape[1]
        if n > self._core_tokens:  # a new shape: compiled once more, then fixed again
            log.warning("action path: a %d-token prompt exceeds the fixed length %d; padding "
                        "to %d from now on (one recompile)", n, self._core_tokens, _round_up(n))
            self._core_tokens = _round_up(n)
        pad = (0, self._core_tokens - n)
        ids = torch.nn.functional.pad(inputs["input_ids"], pad, value=self.tokenizer.pad_token_id)
        mask = torch.nn.functional.pad(inputs["attention_mask"], pad)
        types = inputs.get("mm_token_type_ids")
        types = (torch.nn.functional.pad(types, pad) if types is not None else
                 (ids == self.backbone.config.image_token_id).long())
        positions, _ = self.backbone.model.get_rope_index(
            ids, mm_token_type_ids=types, image_grid_thw=inputs["image_grid_thw"],
            attention_mask=mask)
        noise = torch.randn((1, self.config.horizon, self.config.action_dim),
                            generator=self._noise_source(seed), device=self.device)
        return ids, mask, positions, inputs["pixel_values"], self._state(observation), noise

    def compile_action_path(self, mode: str | None = "auto", backend: str = "inductor") -> None:
        """Make :meth:`act` run :meth:`action_core` under ``torch.compile``.

        ``fullgraph=True, dynamic=False``: one graph of static shapes, no graph break. ``mode``
        "auto": "reduce-overhead" (CUDA graphs) on CUDA, inductor's default elsewhere. The
        prompt is padded to a fixed length (the layout's prompt + 32 instruction tokens + the
        reasoning budget when the head reads reasoning, rounded up to 32); a longer one grows
        it once (a recompile, logged). The first calls compile: :meth:`warmup`. Chunks match
        the eager path to float tolerance (padding, fused kernels), not bit for bit; the noise
        for a ``seed`` is the same.
        """
        if mode == "auto":
            mode = "reduce-overhead" if self.device.type == "cuda" else None
        self._core_fn = torch.compile(self.action_core(), fullgraph=True, dynamic=False,
                                      mode=mode, backend=backend)

    def _blank_observation(self, instruction: str) -> Observation:
        h, w = self.config.image_size or (224, 224)
        return Observation({n: np.zeros((h, w, 3), np.uint8) for n in self.config.camera_names},
                           np.zeros(self.config.state_dim, np.float32), instruction)


def _round_up(n: int, multiple: int = 32) -> int:
    return -(-n // multiple) * multiple
