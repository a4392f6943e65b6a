"""MapIvrMediaEncoder: PyAV decoding, clip proposals, descriptor and backbone backends."""

import numpy as np
import pytest
import torch
from PIL import Image

from xmodal.map_ivr.media_encoding_map_ivr import (
    IMAGE_DESCRIPTOR_DIM,
    MOTION_DESCRIPTOR_DIM,
    MapIvrMediaEncoder,
    clip_motion_descriptor,
    read_video_frames,
)


av = pytest.importorskip("av")


def moving_square(direction: int, frames: int = 16, height: int = 48, width: int = 64) -> np.ndarray:
    """A yellow square crossing a dark textured background; direction +1 right, -1 left, 0 static.

    Left is right played backwards, so both videos contain exactly the same set of frames.
    """
    rows = np.arange(height)[:, None]
    background = np.stack([20 + 10 * (rows % 4) + 0 * np.arange(width)[None, :]] * 3, axis=-1).astype(np.uint8)
    video = np.repeat(background[None], frames, axis=0)
    positions = [6 + 3 * t for t in range(frames)] if direction else [24] * frames
    for t, x in enumerate(positions if direction >= 0 else positions[::-1]):
        video[t, 16:28, x : x + 12] = (250, 210, 30)
    return video


def write_video(path, frames: np.ndarray, fps: int = 8) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "square.mp4"
    write_video(path, moving_square(1))
    return path


# ---------------------------------------------------------------- decoding and clips


def test_read_video_frames(video_file):
    frames = read_video_frames(video_file)
    assert frames.shape == (16, 48, 64, 3) and frames.dtype == np.uint8
    # lossy codec, but close to what was written
    assert np.abs(frames.astype(int) - moving_square(1)).mean() < 5
    assert read_video_frames(video_file, max_frames=5).shape[0] == 5


def test_read_video_frames_errors(tmp_path):
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not_a_video.mp4"):
        read_video_frames(bad)


def test_clip_starts():
    encoder = MapIvrMediaEncoder(clip_length=16, clip_stride=8)
    assert encoder.clip_starts(40) == [0, 8, 16, 24]
    assert encoder.clip_starts(20) == [0, 4]  # a last clip ends on the last frame
    assert encoder.clip_starts(16) == [0] and encoder.clip_starts(5) == [0]
    assert MapIvrMediaEncoder(clip_length=4, clip_stride=1, max_clips=3).clip_starts(10) == [0, 3, 6]


# ---------------------------------------------------------------- descriptor backend


def test_descriptor_shapes_and_dtypes(video_file):
    encoder = MapIvrMediaEncoder(clip_length=8, clip_stride=4)
    assert encoder.image_feature_dim == IMAGE_DESCRIPTOR_DIM == 188
    assert encoder.video_feature_dim == IMAGE_DESCRIPTOR_DIM + MOTION_DESCRIPTOR_DIM == 238
    images = encoder.encode_images([Image.fromarray(moving_square(1)[0]), np.zeros((20, 30, 3), np.uint8)])
    assert images.shape == (2, 188) and images.dtype == np.float32
    out = encoder.encode_videos([video_file, moving_square(0)[:6]])
    assert out["proposal_features"].shape == (2, 3, 238) and out["proposal_features"].dtype == np.float32
    assert out["proposal_scores"] is None
    assert out["proposal_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert np.all(out["proposal_features"][1, 1:] == 0)
    assert np.all(np.isfinite(out["proposal_features"]))


def test_descriptor_block_layout_covers_the_vectors():
    encoder = MapIvrMediaEncoder()
    blocks = encoder.video_feature_blocks
    assert blocks["appearance"] == (0, 188) and blocks["motion"] == (188, 238)
    parts = sorted(v for k, v in blocks.items() if "." in k)
    assert parts[0][0] == 0 and parts[-1][1] == 238
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous, no overlap


def test_descriptor_separates_left_from_right_by_motion_only():
    encoder = MapIvrMediaEncoder()
    out = encoder.encode_videos([moving_square(1), moving_square(-1)])["proposal_features"][:, 0]
    appearance, motion = slice(*encoder.video_feature_blocks["appearance"]), slice(*encoder.video_feature_blocks["motion"])
    np.testing.assert_allclose(out[0, appearance], out[1, appearance], atol=1e-6)
    assert np.abs(out[0, motion] - out[1, motion]).max() > 0.5
    trajectory = slice(*encoder.video_feature_blocks["motion.region_trajectory"])
    assert out[0, trajectory][0] > 0.3 and out[1, trajectory][0] < -0.3  # net x displacement
    flow = slice(*encoder.video_feature_blocks["motion.normal_flow"])
    right_bin, left_bin = 0, 4  # direction bins centred on 0 and pi
    assert out[0, flow][right_bin] > 0.5 and out[1, flow][left_bin] > 0.5


def test_clip_appearance_is_the_mean_frame_descriptor_and_static_has_no_motion():
    encoder = MapIvrMediaEncoder()
    video = moving_square(0)
    features = encoder.encode_videos([video])["proposal_features"][0, 0]
    frames = encoder.encode_images(list(video))
    np.testing.assert_allclose(features[:188], frames.mean(axis=0), atol=1e-6)
    assert np.all(features[188:] == 0)


def test_motion_descriptor_rotation_sign():
    # A bar rotating clockwise on screen (y down) has positive curl; its mirror image negative.
    size, frames = 32, 8
    ys, xs = np.mgrid[0:size, 0:size] - (size - 1) / 2
    clip = np.zeros((frames, 3, size, size), np.float32)
    for t in range(frames):
        angle = 0.3 * t
        along = xs * np.cos(angle) + ys * np.sin(angle)
        across = -xs * np.sin(angle) + ys * np.cos(angle)
        clip[t, :, (np.abs(along) < 12) & (np.abs(across) < 3)] = 1.0
    clips = torch.from_numpy(np.stack([clip, clip[..., ::-1].copy()]))
    motion = clip_motion_descriptor(clips).numpy()
    curl = dict(zip(["speed", "curl", "divergence"], motion[:, -3:].T))["curl"]
    assert curl[0] > 0.2 and curl[1] < -0.2


def test_invalid_media_inputs_name_the_item():
    encoder = MapIvrMediaEncoder()
    with pytest.raises(ValueError, match="image 1"):
        encoder.encode_images([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="video 0"):
        encoder.encode_videos([np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="backend"):
        MapIvrMediaEncoder(backend="vgg")
    with pytest.raises(ValueError, match="needs both"):
        MapIvrMediaEncoder(backend="backbone")


# ---------------------------------------------------------------- backbone backend


def tiny_backbones(with_head: bool = True):
    from transformers import (
        ResNetConfig,
        ResNetModel,
        VideoMAEConfig,
        VideoMAEForVideoClassification,
        VideoMAEModel,
    )

    torch.manual_seed(0)
    image_model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"))
    video_config = VideoMAEConfig(
        image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=16,
        num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3,
    )
    video_model = VideoMAEForVideoClassification(video_config) if with_head else VideoMAEModel(video_config)
    return image_model, video_model


def test_backbone_backend_shapes_and_confidences(video_file):
    image_model, video_model = tiny_backbones()
    encoder = MapIvrMediaEncoder(
        "backbone", image_backbone=image_model, video_backbone=video_model, clip_length=8, clip_stride=4, image_size=32
    )
    assert (encoder.image_feature_dim, encoder.video_feature_dim) == (16, 16)
    images = encoder.encode_images([moving_square(1)[0], Image.fromarray(moving_square(1)[3])])
    assert images.shape == (2, 16) and images.dtype == np.float32
    out = encoder.encode_videos([video_file, moving_square(1)[:6]])
    assert out["proposal_features"].shape == (2, 3, 16) and out["proposal_features"].dtype == np.float32
    scores = out["proposal_scores"]
    assert scores.shape == (2, 3) and scores.dtype == np.float32
    assert np.all(scores[out["proposal_mask"]] >= 1 / 3 - 1e-6) and np.all(scores[out["proposal_mask"]] <= 1)
    assert np.all(scores[~out["proposal_mask"]] == 0)


def test_backbone_backend_by_path_and_without_head(tmp_path):
    image_model, video_model = tiny_backbones(with_head=False)
    image_model.save_pretrained(tmp_path / "image")
    video_model.save_pretrained(tmp_path / "video")
    encoder = MapIvrMediaEncoder(
        "backbone", image_backbone=str(tmp_path / "image"), video_backbone=str(tmp_path / "video"), clip_length=4
    )
    out = encoder.encode_videos([moving_square(1)[:8]])
    assert out["proposal_features"].shape == (1, 2, 16) and out["proposal_scores"] is None
    # the loaded backbone computes what the instance computes
    same = MapIvrMediaEncoder("backbone", image_backbone=image_model, video_backbone=video_model, clip_length=4)
    np.testing.assert_allclose(same.encode_videos([moving_square(1)[:8]])["proposal_features"], out["proposal_features"], atol=1e-6)
    np.testing.assert_allclose(
        same.encode_images([moving_square(1)[0]]), encoder.encode_images([moving_square(1)[0]]), atol=1e-6
    )


def test_descriptor_output_runs_through_extractor_and_model():
    from xmodal.map_ivr.configuration_map_ivr import MapIvrConfig
    from xmodal.map_ivr.feature_extraction_map_ivr import MapIvrFeatureExtractor
    from xmodal.map_ivr.modeling_map_ivr import MapIvrModel

    encoder = MapIvrMediaEncoder(clip_length=8, clip_stride=8)
    videos = [moving_square(d) for d in (1, -1, 0)]
    encoded = encoder.encode_videos(videos)
    images = encoder.encode_images([v[5] for v in videos])
    extractor = MapIvrFeatureExtractor().fit(images, encoded["proposal_features"], encoded["proposal_mask"])
    batch = extractor(images, encoded["proposal_features"], proposal_mask=encoded["proposal_mask"], labels=[0, 1, 2])
    config = MapIvrConfig(
        image_feature_dim=encoder.image_feature_dim, video_feature_dim=encoder.video_feature_dim,
        appearance_dim=8, motion_dim=8, latent_dim=4, encoder_hidden_sizes=[16], decoder_hidden_sizes=[16],
        num_labels=3,
    )
    model = MapIvrModel(config).eval()
    assert torch.isfinite(model(**batch).loss)
    scores = model.score(batch["image_features"], batch["video_features"], proposal_mask=batch["proposal_mask"])
    assert scores.s_all.shape == (3, 3) and torch.isfinite(scores.s_all).all()
