"""Configuration of the VLA policy (one JSON file in the checkpoint) and its errors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

ACTION_SPACES = ("joint_position", "ee_delta")
CONFIG_NAME = "vla_config.json"

# The RoboAlign paper conditions the head on layer 18 of the 28-layer Qwen2.5-VL-7B.
PAPER_FEATURE_LAYER = 18
PAPER_NUM_LAYERS = 28


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file or holds a bad one (the message names it)."""


class BackboneNotFoundError(CheckpointError, FileNotFoundError):
    """The backbone weights are not on this machine (the message says where we looked)."""


def default_feature_layer(num_layers: int) -> int:
    """Scale the paper's layer choice (18 of 28) to a backbone with ``num_layers`` layers.

    The returned index addresses ``hidden_states[index]`` of a Hugging Face model, i.e. the
    output of decoder layer ``index`` counted from 1 (0 would be the embeddings).
    """
    return max(1, min(num_layers, round(PAPER_FEATURE_LAYER / PAPER_NUM_LAYERS * num_layers)))


@dataclass
class HeadConfig:
    """Flow-matching DiT action head.

    ``width``/``layers``/``heads`` size the transformer; ``num_steps`` is the number of Euler
    denoising steps at inference; ``shift`` is the flow-matching schedule shift of diffusers'
    ``FlowMatchEulerDiscreteScheduler`` (1.0 = uniform sigmas). ``context_positions``: size
    of the learned position table added to the backbone features the head attends to (0 =
    none). Qwen2.5-VL puts positions only in M-RoPE, so its hidden states say what a patch
    shows but not where it is; without these positions the head's cross-attention cannot tell
    a cube on the left from one on the right. Tokens past the table share its last entry.
    ``keypoints``: spatial-softmax keypoints per camera (Levine et al. 2016; the image
    encoders of Diffusion Policy and robomimic): each is a softmax over one camera's image
    tokens, reduced to the expected (x, y) on the token grid and given to the head as one
    more context token. They hand the head object positions in image coordinates, which a
    small backbone trained from scratch does not learn to expose by itself (0 = none).
    """

    width: int = 512
    layers: int = 8
    heads: int = 8
    num_steps: int = 10
    shift: float = 1.0
    num_train_timesteps: int = 1000
    context_positions: int = 1024
    keypoints: int = 0


@dataclass
class VLAConfig:
    """Everything that defines a VLA policy besides its weights.

    Fields:
        backbone: local directory or Hugging Face repo id (resolved in the local HF cache
            only) of an image-text-to-text model. In a checkpoint that contains its own
            ``backbone/`` directory this is only informative.
        horizon, action_dim, dimension_names, action_space, dt: the action chunk
            ([horizon, action_dim] float32, row i is the target at ``stamp + i * dt``).
        state_dim: proprioception vector length (0 = no state input).
        camera_names: image keys expected in ``Observation.images`` (in prompt order).
        image_size: (height, width) images are resized to before the processor; None keeps them.
        feature_layer: backbone hidden-state index the head reads; None = scaled paper choice.
        head_context: what the head's features are computed over besides the prompt:
            "reasoning" (the newest reasoning, ReFineVLA/RoboAlign) or "none" (an empty think
            block: the action path never depends on generated text; set by the head stage when
            it is trained that way).
        action_source: "head" (continuous chunk from the flow head) or "tokens" (decode the
            generated FAST tokens; needs reasoning_every == 1).
        reasoning_every: 0 = never generate reasoning; N = generate every N ``predict`` calls and
            reuse the cached text in between (it is regenerated when the instruction changes).
        max_new_tokens: generation budget for reasoning + action tokens.
        prompt_template: user text; ``{instruction}`` is replaced.
        dtype: "auto" (bf16 on CUDA, float32 on CPU), "bfloat16", "float16" or "float32".
        attn_implementation: "auto" (flash_attention_2 when installed on CUDA, else sdpa).
        static_cache: use ``cache_implementation="static"`` for generation on CUDA.
        compile_head: ``torch.compile`` the head's velocity network on CUDA.
        compile_action_path: opt in to ``VLAPolicy.compile_action_path()`` at ``warmup``: the
            action path's features + head as one compiled graph (CUDA graphs on CUDA). Off:
            the eager path.
        trust_remote_code: passed to the Auto classes; off unless the user asks.
    """

    backbone: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    horizon: int = 16
    action_dim: int = 7
    dimension_names: list[str] = field(default_factory=list)
    action_space: str = "joint_position"
    dt: float = 0.1
    state_dim: int = 7
    camera_names: list[str] = field(default_factory=lambda: ["scene"])
    image_size: tuple[int, int] | None = (224, 224)
    feature_layer: int | None = None
    head: HeadConfig = field(default_factory=HeadConfig)
    action_source: str = "head"
    head_context: str = "reasoning"
    reasoning_every: int = 1
    max_new_tokens: int = 256
    prompt_template: str = (
        "Task: {instruction}\n"
        "First reason about the scene and the task inside <think></think>, then give the "
        "robot action inside <answer></answer>."
    )
    dtype: str = "auto"
    attn_implementation: str = "auto"
    static_cache: bool = True
    compile_head: bool = True
    compile_action_path: bool = False
    trust_remote_code: bool = False
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.head, dict):
            # checkpoints written before context_positions existed have no position table
            self.head = HeadConfig(**{"context_positions": 0, **self.head})
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)
        if not self.dimension_names:
            self.dimension_names = [f"a{i}" for i in range(self.action_dim)]
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        checks = [
            ("horizon", self.horizon >= 1),
            ("action_dim", self.action_dim >= 1),
            ("dimension_names", len(self.dimension_names) == self.action_dim),
            ("action_space", self.action_space in ACTION_SPACES),
            ("dt", self.dt > 0),
            ("state_dim", self.state_dim >= 0),
            ("camera_names", len(self.camera_names) >= 1),
            ("image_size", self.image_size is None or len(self.image_size) == 2),
            ("feature_layer", self.feature_layer is None or self.feature_layer >= 1),
            ("action_source", self.action_source in ("head", "tokens")),
            ("head_context", self.head_context in ("reasoning", "none")),
            ("reasoning_every", self.reasoning_every >= 0),
            ("max_new_tokens", self.max_new_tokens >= 1),
            ("prompt_template", "{instruction}" in self.prompt_template),
            ("dtype", self.dtype in ("auto", "bfloat16", "float16", "float32")),
            ("head.num_steps", self.head.num_steps >= 1),
            ("head.width", self.head.width % self.head.heads == 0),
            ("head.context_positions", self.head.context_positions >= 0),
            ("head.keypoints", self.head.keypoints >= 0),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"VLAConfig.{name} is invalid: {getattr(self, name, self.head)!r}")
        if self.action_source == "tokens" and self.reasoning_every != 1:
            raise ValueError("VLAConfig.action_source='tokens' needs reasoning_every=1")

    def to_dict(self) -> dict:
        """Plain-JSON dict of the config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VLAConfig:
        """Build from a dict, rejecting unknown keys (named in the error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"VLAConfig: unknown field(s) {unknown}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        """Write ``vla_config.json`` into ``directory``."""
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, directory_or_file: str | Path) -> VLAConfig:
        """Read ``vla_config.json`` (or a YAML file from ``config/policy/``)."""
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"missing policy config file: {path}")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(path.read_text())
            else:
                data = json.loads(path.read_text())
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"bad policy config file {path}: {exc}") from exc
