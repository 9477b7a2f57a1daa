"""The tiny/mini processor builds with and without torchvision (both branches of the probe)."""

import importlib.util

import numpy as np
import pytest

from roboalign_ros.model import tiny
from roboalign_ros.model.backbone import ImageOnlyQwenVLProcessor, load_processor


@pytest.mark.parametrize("torchvision", [True, False])
def test_the_processor_builds_and_round_trips_whether_torchvision_is_there_or_not(
        monkeypatch, tmp_path, torchvision):
    real = importlib.util.find_spec

    def probe(name, *args, **kwargs):
        if name == "torchvision":  # what a GPU machine (torchvision installed) reports
            return real("json") if torchvision else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", probe)
    processor = tiny.build_processor(tiny.build_tiny_tokenizer(), (112, 140))
    assert isinstance(processor, ImageOnlyQwenVLProcessor)
    image = np.zeros((112, 140, 3), np.uint8)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "go"}]}],
        add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 10]]
    processor.save_pretrained(tmp_path)
    again = load_processor(tmp_path)
    assert again(text=[text], images=[image], return_tensors="pt")["input_ids"].tolist() == \
        inputs["input_ids"].tolist()
