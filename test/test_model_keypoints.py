"""Where the head looks: the prompt's token grid, spatial-softmax keypoints, context positions."""

import numpy as np
import pytest
import torch

from roboalign_ros.model import Observation, VLAConfig, VLAPolicy, build_tiny_policy
from roboalign_ros.model.config import HeadConfig
from roboalign_ros.model.head import FlowMatchingHead, pad_token_grid, spatial_keypoints


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def grid_2x3(camera=0, offset=0):
    """A [T, 5] grid: `offset` text tokens, then a 2-row x 3-column image, then 2 text tokens."""
    rows = [[-1, 0, 0, 0, 0]] * offset
    rows += [[camera, x, y, 1.0, 2.0] for y in (-1.0, 1.0) for x in (-1.0, 0.0, 1.0)]
    rows += [[-1, 0, 0, 0, 0]] * 2
    return torch.tensor(rows)


def test_keypoint_is_the_peaked_token_position_and_ignores_text():
    grid = grid_2x3(offset=1)
    logits = torch.zeros(1, len(grid), 1)
    logits[0, 1 + 5, 0] = 50.0   # image token (x=1, y=1)
    logits[0, 0, 0] = 100.0      # a text token scores higher but is not an image position
    kp = spatial_keypoints(logits, grid)
    assert torch.allclose(kp[0, 0], torch.tensor([1.0, 1.0]), atol=1e-4)


def test_keypoint_offsets_move_within_the_cell_and_mask_removes_tokens():
    grid = grid_2x3()
    logits = torch.zeros(1, len(grid), 1)
    logits[0, 0, 0] = 50.0                   # token (x=-1, y=-1), cell 1 x 2
    offsets = torch.zeros(1, len(grid), 1, 2)
    offsets[0, 0, 0] = torch.tensor([1.0, -0.5])   # half a cell right, a quarter cell up
    kp = spatial_keypoints(logits, grid, offsets=offsets)
    assert torch.allclose(kp[0, 0], torch.tensor([-0.5, -1.5]), atol=1e-4)
    mask = torch.ones(1, len(grid))
    mask[0, 0] = 0                           # the peaked token is padding: the rest average
    kp = spatial_keypoints(logits, grid, mask)
    assert torch.allclose(kp[0, 0], torch.tensor([0.2, 0.2]), atol=1e-4)


def test_one_set_of_keypoints_per_camera():
    grid = torch.cat([grid_2x3(camera=0), grid_2x3(camera=1)])
    logits = torch.zeros(1, len(grid), 2)
    logits[0, 2, :] = 30.0                   # camera 0: (x=1, y=-1)
    logits[0, len(grid) // 2 + 3, :] = 30.0  # camera 1: (x=-1, y=1)
    kp = spatial_keypoints(logits, grid)
    assert kp.shape == (1, 4, 2)
    assert torch.allclose(kp[0, :2], torch.tensor([[1.0, -1.0]] * 2), atol=1e-4)
    assert torch.allclose(kp[0, 2:], torch.tensor([[-1.0, 1.0]] * 2), atol=1e-4)


def test_pad_token_grid_marks_extra_tokens_as_text():
    grid = pad_token_grid(grid_2x3(), 12)
    assert grid.shape == (12, 5) and (grid[8:, 0] == -1).all()
    assert pad_token_grid(grid, 3).shape == (3, 5)


def test_policy_token_grid_follows_the_prompt_layout():
    policy = build_tiny_policy(image_size=(112, 168), camera_names=("scene", "wrist"),
                               head_keypoints=4, seed=1)
    grid = policy.token_grid()
    inputs = policy.encode_observation(Observation(
        {c: np.zeros((112, 168, 3), np.uint8) for c in ("scene", "wrist")},
        np.zeros(7, np.float32), "pick up the red cube"))
    image = inputs["input_ids"][0, :len(grid)] == policy.backbone.config.image_token_id
    assert torch.equal(grid[:, 0] >= 0, image)
    for cam in (0, 1):
        xy = grid[grid[:, 0] == cam][:, 1:3]
        assert len(xy) == (112 // 28) * (168 // 28)          # merged 28 px tokens
        assert torch.allclose(xy[0], torch.tensor([-1.0, -1.0]))   # row-major from top left
        assert torch.allclose(xy[-1], torch.tensor([1.0, 1.0]))
        assert torch.allclose(xy[1, 0] - xy[0, 0], torch.tensor(2 / 5))
    assert policy.head.token_grid.shape == grid.shape       # set on the head at build


def test_keypoint_head_predicts_checkpoint_roundtrip(tmp_path):
    policy = build_tiny_policy(head_keypoints=4, seed=2)
    obs = Observation({"scene": np.full((112, 112, 3), 90, np.uint8)},
                      np.zeros(7, np.float32), "pick up the red cube")
    a = policy.predict(obs, seed=3).chunk
    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "p"), device="cpu")
    assert loaded.config.head.keypoints == 4
    np.testing.assert_allclose(loaded.predict(obs, seed=3).chunk, a, atol=1e-5)


def test_head_without_token_grid_says_so():
    head = FlowMatchingHead(HeadConfig(width=32, layers=1, heads=2, keypoints=2), 4, 2, 0, 16)
    with pytest.raises(ValueError, match="token grid"):
        head.loss(torch.zeros(1, 5, 16), None, torch.zeros(1, 4, 2))


def test_checkpoints_from_before_context_positions_load_without_them():
    head = VLAConfig.from_dict({**VLAConfig().to_dict(), "head": {"width": 64, "layers": 2,
                                                               "heads": 4}}).head
    assert head.context_positions == 0 and head.keypoints == 0
    assert HeadConfig().context_positions > 0


def _fit(head, features, targets, steps=150):
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = head.loss(features, None, targets, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head.sample(features, None, generator=torch.Generator().manual_seed(1),
                           num_steps=8)
    return float(((pred - targets) ** 2).mean())


def test_keypoints_let_the_head_read_where_a_marked_token_is():
    """Features identical except one marked image token; the target is its x. Without
    positions the head cannot tell where the mark is; with keypoints it can."""
    torch.manual_seed(0)
    grid = grid_2x3()
    n, t, dim = 48, len(grid), 16
    where = torch.randint(0, 6, (n,))
    features = torch.zeros(n, t, dim)
    features[torch.arange(n), where, 0] = 3.0
    targets = grid[where, 1][:, None, None].expand(n, 2, 1).clone()   # [n, horizon 2, 1]
    blind = FlowMatchingHead(HeadConfig(width=32, layers=2, heads=2, context_positions=0), 2, 1,
                             0, dim)
    seeing = FlowMatchingHead(HeadConfig(width=32, layers=2, heads=2, context_positions=0,
                                         keypoints=2), 2, 1, 0, dim)
    seeing.set_token_grid(grid)
    mse_blind, mse_seeing = _fit(blind, features, targets), _fit(seeing, features, targets)
    assert mse_seeing < 0.1 < mse_blind
