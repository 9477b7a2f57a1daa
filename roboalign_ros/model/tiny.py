"""Small random backbones and policies of the real classes (Qwen2.5-VL + FAST + DiT head).

Everything is built locally: a byte-level BPE text tokenizer trained with ``tokenizers`` (on a
small built-in corpus, or on a dataset's own text), a Qwen2.5-VL processor (image processor +
tokenizer + chat template) and a randomly initialised ``Qwen2_5_VLForConditionalGeneration``
from a config. Nothing is downloaded. Presets:

- ``tiny``: hidden 64, for unit tests and the demo's random policy;
- ``mini``: the size that trains on 2 CPU cores in minutes (see :data:`PRESETS`), the backbone
  of ``roboalign repro mini``;
- ``qwen2.5-vl-3b``: the real 3B dimensions with random weights, for GPU benchmarks.

CLIs: ``python -m roboalign_ros.model.tiny OUT_DIR [--action-dim 7 ...]`` (a tiny policy) and
``python -m roboalign_ros.model.tiny --backbone mini OUT_DIR --corpus DATASET`` (a backbone
directory for training).
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForImageTextToText, PreTrainedTokenizerFast, Qwen2_5_VLConfig

from .action_tokenizer import BinningActionTokenizer, FastActionTokenizer
from .backbone import ImageOnlyQwenVLProcessor
from .config import HeadConfig, VLAConfig
from .normalization import Normalizer
from .policy import VLAPolicy

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = """\
pick up the red cube and place it in the bowl. open the top drawer. close the drawer.
push the blue block to the left of the plate. stack the green cube on the yellow cube.
put the spoon in the cup. move the arm up, then down, then rotate the gripper.
<think>The gripper is above the table. The cube is to the right of the bowl, so I move
right, lower the gripper, close it, lift, move left over the bowl and open it.</think>
<answer></answer> <Observation> <Situation Analysis> <Spatial Reasoning> <Task Planning>
Task: First reason about the scene and the task, then give the robot action.
"""

PRESETS = {
    # text: hidden, intermediate, layers, heads, kv heads, mrope_section; vision: depth, hidden,
    # intermediate, heads, fullatt_block_indexes
    "tiny": dict(hidden=64, inter=128, layers=4, heads=4, kv=2, mrope=[2, 3, 3],
                 v_depth=2, v_hidden=32, v_inter=64, v_heads=2, v_full=[1], tie=False),
    # mini: sized for 2 CPU cores. 4 text layers of width 192 (head dim 32) hold a ~100-token
    # rationale plus ~30 FAST tokens; a 3-block vision tower of width 96 sees 112x140 images as
    # 80 patches (20 merged tokens, 28 px each: finer than a 4 cm cube at the table's distance).
    # One SFT step on 16 samples takes ~0.3 s here, so tens of thousands of samples fit in the
    # reproduction's time budget.
    "mini": dict(hidden=192, inter=512, layers=4, heads=6, kv=2, mrope=[4, 6, 6],
                 v_depth=3, v_hidden=96, v_inter=256, v_heads=3, v_full=[2], tie=True),
    # Qwen2.5-VL-3B-Instruct dimensions (random weights, for benchmarks)
    "qwen2.5-vl-3b": dict(hidden=2048, inter=11008, layers=36, heads=16, kv=2,
                          mrope=[16, 24, 24], v_depth=32, v_hidden=1280, v_inter=3420,
                          v_heads=16, v_full=[7, 15, 23, 31], tie=True),
}


def build_tiny_tokenizer(vocab_size: int = 512,
                         corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen's special tokens.

    Trained on ``corpus`` (lines of text, e.g. a dataset's instructions and rationales, so that
    they take few tokens) plus the built-in corpus.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([*_CORPUS.splitlines(), *(corpus or [])], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")


def build_processor(tokenizer, image_size: tuple[int, int] = (112, 112)):
    """Qwen2-VL image processor (pixel budget fitted to ``image_size``) + tokenizer + template.

    Always the image-only processor: the stock one needs a video processor, which transformers
    5 builds only with torchvision (and a machine with torchvision got "Received a NoneType for
    argument video_processor"). With torchvision the image processor is transformers' default
    (torch) backend, else the PIL one.
    """
    if importlib.util.find_spec("torchvision") is not None:
        from transformers import Qwen2VLImageProcessor as image_cls
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as image_cls,
        )
    pixels = image_size[0] * image_size[1]
    image_processor = image_cls(min_pixels=min(pixels, 56 * 56), max_pixels=pixels,
                                patch_size=14, merge_size=2, temporal_patch_size=2)
    return ImageOnlyQwenVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    chat_template=CHAT_TEMPLATE)


def backbone_config(tokenizer, preset: str = "tiny") -> Qwen2_5_VLConfig:
    """A ``Qwen2_5_VLConfig`` of the given preset whose special-token ids match ``tokenizer``."""
    p = PRESETS[preset]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = 151936 if preset == "qwen2.5-vl-3b" else len(tokenizer)
    text = dict(vocab_size=vocab, hidden_size=p["hidden"], intermediate_size=p["inter"],
                num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                num_key_value_heads=p["kv"], max_position_embeddings=4096 * 8,
                rope_parameters={"rope_type": "default", "mrope_section": p["mrope"],
                                 "rope_theta": 1e6},
                bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=p["tie"])
    vision = dict(depth=p["v_depth"], hidden_size=p["v_hidden"], intermediate_size=p["v_inter"],
                  num_heads=p["v_heads"], out_hidden_size=p["hidden"], patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=p["v_full"])
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=p["tie"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_random_backbone(preset: str = "tiny", image_size: tuple[int, int] = (112, 112),
                          seed: int = 0, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
                          corpus: list[str] | None = None, vocab_size: int = 512):
    """``(model, processor)``: a randomly initialised backbone of the preset's dimensions.

    ``corpus`` / ``vocab_size``: text the tokenizer is trained on (see build_tiny_tokenizer).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: {preset!r} is not one of {sorted(PRESETS)}")
    tokenizer = build_tiny_tokenizer(vocab_size, corpus)
    processor = build_processor(tokenizer, image_size)
    torch.manual_seed(seed)
    config = backbone_config(tokenizer, preset)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype,
                                                        attn_implementation=attn_implementation)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model.eval(), processor


def dataset_corpus(roots) -> list[str]:
    """The text a policy trained on ``roots`` reads and writes: instructions and rationales."""
    import json
    from pathlib import Path

    from roboalign_ros.data import DatasetReader

    lines = []
    for root in ([roots] if isinstance(roots, (str, Path)) else roots):
        reader = DatasetReader(root)
        lines += [str(t) for t in reader.tasks]
        rationales = Path(root) / "meta" / "rationales.jsonl"
        if rationales.is_file():
            for line in rationales.read_text().splitlines():
                try:
                    lines.append(str(json.loads(line).get("rationale", "")))
                except json.JSONDecodeError:
                    continue  # a torn last line of an interrupted teacher run
    return lines


def write_random_backbone(directory, preset: str = "mini", image_size=(112, 140), seed: int = 0,
                          corpus: list[str] | None = None, vocab_size: int = 1024) -> str:
    """Write a random backbone of ``preset`` (model + processor) to ``directory``."""
    model, processor = build_random_backbone(preset, tuple(image_size), seed, corpus=corpus,
                                             vocab_size=vocab_size)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def synthetic_chunks(n: int, horizon: int, action_dim: int, seed: int = 0) -> np.ndarray:
    """Smooth random chunks [n, H, D] in [-1, 1] (sums of two low-frequency sinusoids)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    out = np.zeros((n, horizon, action_dim))
    for _ in range(2):
        freq = rng.uniform(0.1, 1.0, (n, 1, action_dim))
        amp = rng.uniform(0.1, 0.5, (n, 1, action_dim))
        out += amp * np.sin(2 * np.pi * (freq * t + rng.uniform(0, 1, (n, 1, action_dim))))
    return np.clip(out, -1, 1).astype(np.float32)


def build_tiny_policy(action_dim: int = 7, horizon: int = 10, state_dim: int | None = None,
                      image_size: tuple[int, int] = (112, 112),
                      camera_names: tuple[str, ...] = ("scene",), seed: int = 0,
                      action_tokenizer: str = "fast", reasoning_every: int = 1,
                      max_new_tokens: int = 16, head_steps: int = 4,
                      action_space: str = "joint_position", dimension_names=None,
                      dt: float = 0.1, device: str | torch.device = "cpu",
                      head_keypoints: int = 0) -> VLAPolicy:
    """A tiny random :class:`VLAPolicy` (hidden 64, 4 layers, FAST fitted on synthetic data).

    Stats are fitted on synthetic chunks scaled to +-1 robot units per dimension, so outputs are
    in a plausible range; the policy is untrained (its actions and reasoning are noise).
    """
    state_dim = action_dim if state_dim is None else state_dim
    config = VLAConfig(
        backbone="tiny-random", horizon=horizon, action_dim=action_dim, state_dim=state_dim,
        dimension_names=list(dimension_names or []), action_space=action_space, dt=dt,
        camera_names=list(camera_names), image_size=tuple(image_size),
        head=HeadConfig(width=64, layers=2, heads=4, num_steps=head_steps,
                        keypoints=head_keypoints),
        reasoning_every=reasoning_every, max_new_tokens=max_new_tokens, dtype="float32",
        attn_implementation="sdpa", compile_head=False, seed=seed,
    )
    model, processor = build_random_backbone("tiny", image_size, seed, device)
    data = synthetic_chunks(512, horizon, action_dim, seed)
    if action_tokenizer == "fast":
        tok = FastActionTokenizer(horizon, action_dim, bpe_vocab_size=256).fit(data)
    elif action_tokenizer == "binning":
        tok = BinningActionTokenizer(horizon, action_dim, n_bins=64)
    else:
        raise ValueError(f"action_tokenizer must be 'fast' or 'binning', got {action_tokenizer!r}")
    normalizer = Normalizer.fit(action=data, state=data[:, 0, :state_dim] if state_dim else None)
    return VLAPolicy.build(config, model, processor, tok, normalizer)


def write_tiny_policy(directory: str, **kwargs) -> str:
    """Build a tiny policy (``build_tiny_policy(**kwargs)``) and save it to ``directory``."""
    build_tiny_policy(**kwargs).save_pretrained(directory)
    return directory


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign model tiny``; ``func`` writes the checkpoint."""
    ap.add_argument("out_dir")
    ap.add_argument("--backbone", choices=sorted(PRESETS), default=None,
                    help="write a random backbone of this preset (not a policy)")
    ap.add_argument("--corpus", nargs="*", default=[],
                    help="datasets whose instructions/rationales train the tokenizer")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--action-dim", type=int, default=7)
    ap.add_argument("--horizon", type=int, default=10)
    ap.add_argument("--state-dim", type=int, default=None)
    ap.add_argument("--image-size", type=int, nargs=2, default=(112, 112))
    ap.add_argument("--cameras", nargs="+", default=["scene"])
    ap.add_argument("--action-space", default="joint_position")
    ap.add_argument("--reasoning-every", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.set_defaults(func=run_cli)


def main(argv=None) -> None:
    """CLI: write a tiny random policy checkpoint."""
    ap = argparse.ArgumentParser(prog="roboalign model tiny", description=__doc__.splitlines()[0])
    add_arguments(ap)
    run_cli(ap.parse_args(argv))


def run_cli(a: argparse.Namespace) -> None:
    """``roboalign model tiny`` with parsed options."""
    if a.backbone:
        corpus = dataset_corpus(a.corpus) if a.corpus else None
        print(write_random_backbone(a.out_dir, a.backbone, tuple(a.image_size), a.seed, corpus,
                                    a.vocab_size))
        return
    write_tiny_policy(a.out_dir, action_dim=a.action_dim, horizon=a.horizon,
                      state_dim=a.state_dim, image_size=tuple(a.image_size),
                      camera_names=tuple(a.cameras), action_space=a.action_space,
                      reasoning_every=a.reasoning_every, seed=a.seed)
    print(a.out_dir)


if __name__ == "__main__":
    main()
