"""data.backend=dali: NVIDIA DALI decodes and crops on the GPU (nvJPEG region-of-interest decode,
antialiased resize); everything else is the fast backend's.

The random parameters are drawn exactly as in the fast and official backends (ViewSampler, seeded
per sample by (seed, epoch, index)), in the training process, and handed to DALI as per-view crop
windows; BatchAugment then applies the photometric ops. So resume stays exact and the distribution
is the official one; only the decode + resize filter differs (DALI's, not PIL's).

Optional: pip install -e '.[dali]' (nvidia-dali-cuda120; or nvidia-dali-cuda130). On a CPU-only
run DALI's CPU operators are used (for checking; tests/pretrain/test_fast_data.py runs them where
DALI imports). The GPU path (mixed decoder) is not verified on these CPU-only machines.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from core.cli import UserError
from pretrain.fast_data import FastTwoViewDataset
from pretrain.view_batch import ViewBatch


class DaliLoader:
    """An iterable with the DataLoader's interface for pretrain.loop: yields (x1, x2, skipped, index)."""

    def __init__(self, dataset: FastTwoViewDataset, sampler, batch_size: int, device: torch.device, threads: int = 4):
        from nvidia.dali import fn, pipeline_def, types

        self.dataset, self.sampler, self.batch_size, self.device = dataset, sampler, batch_size, device
        views = batch_size * 2 * dataset.pairs
        gpu = device.type == "cuda"
        size = dataset.size

        @pipeline_def(batch_size=views, num_threads=max(1, threads), device_id=(device.index or 0) if gpu else None,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def crops():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            start = fn.external_source(name="start", dtype=types.FLOAT, ndim=1)
            shape = fn.external_source(name="shape", dtype=types.FLOAT, ndim=1)
            # absolute (x, y) window of the crop box; ROI decode reads only what the crop needs
            img = fn.decoders.image_slice(encoded, start, shape, device="mixed" if gpu else "cpu",
                                          output_type=types.RGB, normalized_anchor=False, normalized_shape=False)
            return fn.resize(img, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=True)

        self.pipe = crops()
        self.pipe.build()

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # drop_last, as the DataLoader

    def _views(self, index: int):
        path, _ = self.dataset.base.samples[index]
        with open(path, "rb") as f:
            data = f.read()
        try:
            width, height = Image.open(io.BytesIO(data)).size
        except Exception:
            self.dataset.base.loader(path)  # raises the dataset's one clear message (BadImageError)
            raise UserError(f"data.backend=dali cannot read {path}; data.skip_bad_images needs data.backend=fast") from None
        self.dataset._reseed(index)
        draws = [self.dataset.sampler.draw(width, height) for _ in range(2 * self.dataset.pairs)]
        return np.frombuffer(data, dtype=np.uint8), draws

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        order = list(self.sampler)
        pairs = self.dataset.pairs
        for b in range(len(self)):
            indices = order[b * self.batch_size:(b + 1) * self.batch_size]
            samples = [self._views(i) for i in indices]
            # rows: view k of pair j of sample s, k-major then pair then sample (collate_views' layout)
            rows = [(data, draws[2 * j + k]) for k in (0, 1) for j in range(pairs) for data, draws in samples]
            self.pipe.feed_input("encoded", [d for d, _ in rows])
            self.pipe.feed_input("start", [np.array([box[1], box[0]], np.float32) for _, (box, _) in rows])
            self.pipe.feed_input("shape", [np.array([box[3], box[2]], np.float32) for _, (box, _) in rows])
            try:
                (out,) = self.pipe.run()
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"DALI could not decode a batch of images {indices[:4]}... ({first}); find the file "
                                "with data.backend=fast, which names it (or skips it with data.skip_bad_images=true)") from None
            out = out.as_tensor()
            pixels = torch.empty(out.shape(), dtype=torch.uint8, device=self.device)
            feed_ndarray(out, pixels, cuda_stream=torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None)
            pixels = pixels.permute(0, 3, 1, 2)  # NHWC -> NCHW
            host = torch.tensor([v for _, (_, v) in rows], dtype=torch.float32)
            params = host.to(self.device)
            half = len(rows) // 2
            yield (ViewBatch(pixels[:half], params[:half], host[:half]),
                   ViewBatch(pixels[half:], params[half:], host[half:]), 0, torch.tensor(indices))
