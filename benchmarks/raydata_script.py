"""The peer: a Ray Data batch-inference script as a Ray user would write it from the Hugging Face
ViViT page (PyAV, its frame sampling, VivitImageProcessor, transformers' model) and Ray Data's
batch-inference guide, with a keyframe seek to the clip instead of the page's decode from the
start. `benchmarks/versus_raydata.py` times it against `vivit-batch run`.

    python benchmarks/raydata_script.py MANIFEST.csv OUTPUT_DIR MODEL_DIR
"""

import sys

import av
import numpy as np
import ray
import torch
from transformers import VivitForVideoClassification, VivitImageProcessor

manifest, output, model_dir = sys.argv[1:4]
CLIP_LEN, FRAME_SAMPLE_RATE = 32, 4


def sample_frame_indices(clip_len, frame_sample_rate, seg_len, rng):  # the HF page's
    converted_len = int(clip_len * frame_sample_rate)
    end_idx = rng.integers(converted_len, seg_len)
    start_idx = end_idx - converted_len
    indices = np.linspace(start_idx, end_idx, num=clip_len)
    return np.clip(indices, start_idx, end_idx - 1).astype(np.int64)


def read_clip(uri, video_id):
    with av.open(uri) as container:
        stream = container.streams.video[0]
        rng = np.random.default_rng(abs(hash(video_id)))
        indices = sample_frame_indices(CLIP_LEN, FRAME_SAMPLE_RATE, stream.frames, rng)
        to_pts = 1 / (stream.average_rate * stream.time_base)
        container.seek(int(indices[0] * to_pts), stream=stream)  # the keyframe before the clip
        wanted, frames = set(indices.tolist()), []
        for frame in container.decode(stream):
            index = round(frame.pts / to_pts)
            if index in wanted:
                frames += [frame.to_ndarray(format="rgb24")] * int((indices == index).sum())
            if index >= indices[-1]:
                return frames


def preprocess(batch):
    processor = VivitImageProcessor.from_pretrained(model_dir)
    clips = [read_clip(u, v) for u, v in zip(batch["uri"], batch["video_id"], strict=True)]
    pixels = [processor(clip, return_tensors="np")["pixel_values"][0] for clip in clips]
    return {"video_id": batch["video_id"], "pixel_values": np.stack(pixels)}


class Classifier:
    def __init__(self):
        self.model = VivitForVideoClassification.from_pretrained(model_dir).eval()

    def __call__(self, batch):
        with torch.inference_mode():
            logits = self.model(pixel_values=torch.from_numpy(batch["pixel_values"])).logits
        scores, ids = logits.softmax(-1).max(-1)
        labels = [self.model.config.id2label[i] for i in ids.tolist()]
        return {"video_id": batch["video_id"], "label": labels, "score": scores.numpy()}


ray.init()
(
    ray.data.read_csv(manifest)
    .map_batches(preprocess, batch_size=4, num_cpus=0.5)
    .map_batches(Classifier, batch_size=8, concurrency=1, num_cpus=0.5)
    .write_parquet(output)
)
