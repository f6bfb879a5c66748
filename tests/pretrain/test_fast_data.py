"""The fast data path (data.backend=fast) draws the official parameters, its batched device ops equal
the per-image reference, its outputs match the official pipeline's, and training with it resumes exactly."""

import numpy as np
import pytest
import torch
from PIL import Image

from bench.photos import write_photo_folder
from core.checkpoint import read_checkpoint
from core.cli import UserError
from core.images import BadImageError, image_folder, load_rgb
from core.sampling import sample_seed
from pretrain.batch_augment import BatchAugment, reference_view
from pretrain.data import TwoViewDataset, simsiam_augmentation
from pretrain.fast_data import FastTwoViewDataset, collate_views, crop_resize, draft_scale, official_view
from pretrain.view_batch import P, PARAMS, ViewBatch
from pretrain.loop import LAST, main
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """16 ImageNet-sized (500x375 / 375x500) JPEGs of scikit-image's bundled photographs."""
    return image_folder(write_photo_folder(tmp_path_factory.mktemp("photos"), per_photo=2))


def test_sampler_replays_the_official_draws_bit_for_bit(photos):
    # Same seed -> the official PIL pipeline and its replay from ViewSampler's parameters agree exactly,
    # so the fast path's crop boxes, jitter factors and order, grayscale, blur sigma and flip ARE the
    # official ones for every (seed, epoch, index), not just equal in distribution.
    for blur, min_scale in ((True, 0.2), (False, 0.08)):
        official = simsiam_augmentation(96, min_scale, blur)
        fast = FastTwoViewDataset(photos, 96, min_scale, blur, seed=3)
        for index in range(len(photos)):
            img = load_rgb(photos.samples[index][0])
            torch.default_generator.manual_seed(sample_seed(3, 0, index))
            views = [official(img), official(img)]
            fast._reseed(index)
            draws = [fast.sampler.draw(*img.size) for _ in range(2)]
            for view, (box, v) in zip(views, draws):
                assert torch.equal(view, official_view(img, box, v, 96))
                assert blur or v[P["blur"]] == 0


def test_workers_mode_at_full_scale_equals_the_official_dataset(photos):
    # At 224 px on 500x375 images no crop allows a reduced-scale decode, so the fast worker's uint8
    # crop is the official crop, and with the photometric ops in the workers the views are identical.
    official = TwoViewDataset(photos, simsiam_augmentation(224), seed=0)
    fast = FastTwoViewDataset(photos, 224, seed=0, photometric="workers")
    for index in range(0, len(photos), 3):
        (a1, a2), ia = official[index]
        (b1, b2), ib = fast[index]
        assert ia == ib == index and torch.equal(a1, b1) and torch.equal(a2, b2)


def test_draft_scale_rule():
    assert draft_scale([(0, 0, 300, 400), (0, 0, 250, 260)], 224) == 1
    assert draft_scale([(0, 0, 300, 400), (0, 0, 130, 260)], 64) == 2  # the smaller box decides
    assert draft_scale([(0, 0, 520, 600), (0, 0, 600, 530)], 64) == 8
    img = Image.new("RGB", (200, 100))
    assert crop_resize(img, (10, 20, 50, 60), (400, 200), 16).size == (16, 16)  # drafted 2x: box mapped


def _random_params(n, g, force=None):
    v = torch.zeros(n, len(PARAMS))
    v[:, P["jitter"]] = (torch.rand(n, generator=g) < 0.8).float()
    v[:, P["brightness"]:P["saturation"] + 1] = 0.6 + 0.8 * torch.rand(n, 3, generator=g)
    v[:, P["hue"]] = -0.1 + 0.2 * torch.rand(n, generator=g)
    v[:, P["order0"]:P["order3"] + 1] = torch.stack([torch.randperm(4, generator=g) for _ in range(n)]).float()
    v[:, P["gray"]] = (torch.rand(n, generator=g) < 0.3).float()
    v[:, P["blur"]] = (torch.rand(n, generator=g) < 0.5).float()
    v[:, P["sigma"]] = 0.1 + 1.9 * torch.rand(n, generator=g)
    v[:, P["flip"]] = (torch.rand(n, generator=g) < 0.5).float()
    for name, value in (force or {}).items():
        v[:, P[name]] = value
    return v


@pytest.mark.parametrize("force", [None, {"jitter": 1.0}, {"jitter": 1.0, "hue": 0.1}, {"jitter": 1.0, "hue": -0.1},
                                   {"gray": 1.0, "blur": 1.0, "sigma": 2.0}, {"blur": 1.0, "sigma": 0.1},
                                   {"jitter": 0.0, "gray": 0.0, "blur": 0.0, "flip": 1.0}])
def test_batched_device_ops_equal_the_per_image_reference(photos, force):
    # Fixed parameters; crops from the photos (real colour statistics), batch of 12 at 48 px.
    g = torch.Generator().manual_seed(hash(str(force)) % 1000)
    pixels = torch.stack([torch.from_numpy(np.array(load_rgb(photos.samples[i][0]).resize((48, 48)))).permute(2, 0, 1)
                          for i in range(12)])
    params = _random_params(12, g, force)
    out = BatchAugment()(ViewBatch(pixels, params))
    ref = torch.stack([reference_view(pixels[i], params[i]) for i in range(12)])
    assert out.shape == (12, 3, 48, 48) and out.dtype == torch.float32
    # float32 rounding only (different op order inside HSV and the separable blur): 2e-5 in
    # normalised units is < 1/100 of one 8-bit grey level (1/255/0.225 = 0.017)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    assert torch.equal(out, BatchAugment()(ViewBatch(pixels, params)))  # deterministic


@pytest.mark.parametrize("size", [224, 64])
def test_outputs_match_the_official_pipeline_per_channel(photos, size):
    # The same images and seeds through both paths (64 px: the fast path decodes at a reduced DCT
    # scale for most crops). Same parameters, so compare both the per-channel statistics of all views
    # and the per-view pixel difference. Tolerances, in normalised units (one 8-bit level = 0.017):
    # channel means within 0.03, channel stds within 0.02, mean |difference| per view below 0.08.
    # Measured on these photos (both sizes): means 0.018-0.024 lower on the official side, stds within
    # 0.0065, per-view mean |difference| at most 0.058 (0.023-0.025 on average). The official side is
    # darker by about one 8-bit level: PIL rounds to uint8 after every op, its Gaussian blur is a
    # box-blur approximation, and DCT-domain downscaling filters differently (64 px).
    official = TwoViewDataset(photos, simsiam_augmentation(size), seed=1)
    fast = FastTwoViewDataset(photos, size, seed=1)
    if size == 64:
        boxes = []
        for i in range(len(photos)):
            fast._reseed(i)
            boxes.append(draft_scale([fast.sampler.draw(500, 375)[0] for _ in range(2)], size))
        assert sum(r > 1 for r in boxes) >= len(boxes) // 2  # the reduced-scale decode is exercised
    augment = BatchAugment()
    a, b = [], []
    for epoch in range(2):
        official.set_epoch(epoch)
        fast.set_epoch(epoch)
        batch = [fast[i] for i in range(len(photos))]
        x1, x2, skipped, index = collate_views(batch)
        assert skipped == 0 and index.tolist() == list(range(len(photos)))
        b += [augment(x1), augment(x2)]
        a += [torch.stack([official[i][0][k] for i in range(len(photos))]) for k in (0, 1)]
    a, b = torch.cat(a), torch.cat(b)
    assert (a.mean((0, 2, 3)) - b.mean((0, 2, 3))).abs().max() < 0.03
    assert (a.std((0, 2, 3)) - b.std((0, 2, 3))).abs().max() < 0.02
    assert (a - b).abs().mean((1, 2, 3)).max() < 0.08


def test_bad_backend_and_bad_images(tmp_path, tiny_folder):
    with pytest.raises(UserError, match="not one of official, fast, dali"):
        main(tiny_config(tmp_path / "a", tiny_folder, **{"data.backend": "fsat"}))
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install"):
            main(tiny_config(tmp_path / "b", tiny_folder, **{"data.backend": "dali"}))
    with pytest.raises(UserError, match="data.photometric"):
        main(tiny_config(tmp_path / "c", tiny_folder, **{"data.backend": "fast", "data.photometric": "gpu"}))
    bad = tiny_folder / "class0" / "000.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(BadImageError, match="000.jpg"):
        FastTwoViewDataset(image_folder(tiny_folder), 32)[0]
    assert FastTwoViewDataset(image_folder(tiny_folder, skip_bad=True), 32)[0] is None


def _weights(path):
    return read_checkpoint(path)["state_dict"]


def test_fast_backend_trains_and_resumes_exactly(tmp_path, tiny_folder):
    # Batched device ops (forced on this CPU): 2 epochs straight vs stopped after 5 steps and resumed.
    fast = {"data.backend": "fast", "data.photometric": "device"}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    main(tiny_config(straight, tiny_folder, **fast))
    main(tiny_config(resumed, tiny_folder, **fast, **{"train.stop_after_steps": 5}))
    assert read_checkpoint(resumed / LAST)["global_step"] == 5
    main(tiny_config(resumed, tiny_folder, **fast))
    a, b = _weights(straight / "checkpoint_0002.pth.tar"), _weights(resumed / "checkpoint_0002.pth.tar")
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    # workers mode (auto on a CPU) sees exactly the official views: same weights as the official backend
    w, o = tmp_path / "workers", tmp_path / "official"
    main(tiny_config(w, tiny_folder, **{"data.backend": "fast", "optim.epochs": 1}))
    main(tiny_config(o, tiny_folder, **{"optim.epochs": 1}))
    a, b = _weights(w / "checkpoint_0001.pth.tar"), _weights(o / "checkpoint_0001.pth.tar")
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_fast_views_do_not_depend_on_worker_count(tmp_path, tiny_folder):
    fast = {"data.backend": "fast", "data.photometric": "device", "optim.epochs": 1, "train.stop_after_steps": 2}
    a, b = tmp_path / "w0", tmp_path / "w2"
    main(tiny_config(a, tiny_folder, **fast))
    main(tiny_config(b, tiny_folder, **fast, **{"data.workers": 2}))
    sa, sb = _weights(a / LAST), _weights(b / LAST)
    assert all(torch.equal(v, sb[k]) for k, v in sa.items())


def test_dali_backend_matches_official_statistics_and_resumes(tmp_path, tiny_folder, photos):
    # Optional backend: runs where nvidia-dali imports (its CPU operators here; its GPU decode is not
    # covered by this CPU test). Same parameters as the official path; DALI's own JPEG decoder and
    # resize filter -> the same tolerances as the fast path's.
    pytest.importorskip("nvidia.dali")
    from pretrain.dali_data import DaliLoader
    from core.sampling import ResumableSampler

    fast = FastTwoViewDataset(photos, 224, seed=1)
    sampler = ResumableSampler(fast, 1, 0, 0)
    sampler.set_epoch(0)
    official = TwoViewDataset(photos, simsiam_augmentation(224), seed=1)
    augment, a, b = BatchAugment(), [], []
    for x1, x2, skipped, index in DaliLoader(fast, sampler, 8, torch.device("cpu"), 1):
        assert skipped == 0 and x1.pixels.shape == (8, 3, 224, 224)
        b += [augment(x1), augment(x2)]
        a += [torch.stack([official[i][0][k] for i in index.tolist()]) for k in (0, 1)]
    a, b = torch.cat(a), torch.cat(b)
    assert (a.mean((0, 2, 3)) - b.mean((0, 2, 3))).abs().max() < 0.03  # measured 0.017-0.023
    assert (a.std((0, 2, 3)) - b.std((0, 2, 3))).abs().max() < 0.02  # measured < 0.0025
    assert (a - b).abs().mean((1, 2, 3)).max() < 0.08  # measured 0.040
    dali = {"data.backend": "dali"}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    main(tiny_config(straight, tiny_folder, **dali))
    main(tiny_config(resumed, tiny_folder, **dali, **{"train.stop_after_steps": 5}))
    main(tiny_config(resumed, tiny_folder, **dali))
    wa, wb = _weights(straight / "checkpoint_0002.pth.tar"), _weights(resumed / "checkpoint_0002.pth.tar")
    assert all(torch.equal(v, wb[k]) for k, v in wa.items())


def test_two_pairs_keep_the_official_batch_layout(photos):
    # pairs=2 (the "asymmetric, 2x sampling" ablation): rows are pair after pair, as collate_skipping's
    from pretrain.data import collate_skipping

    official = TwoViewDataset(photos, simsiam_augmentation(224), seed=0, pairs=2)
    workers = FastTwoViewDataset(photos, 224, seed=0, pairs=2, photometric="workers")
    device = FastTwoViewDataset(photos, 224, seed=0, pairs=2)
    idx = [0, 5, 9]
    a = collate_skipping([official[i] for i in idx])
    b = collate_skipping([workers[i] for i in idx])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape[0] == 6
    x1, x2, _, index = collate_views([device[i] for i in idx])
    items = [device[i][0] for i in idx]
    expect1 = torch.stack([items[s][2 * j][1] for j in range(2) for s in range(3)])
    expect2 = torch.stack([items[s][2 * j + 1][1] for j in range(2) for s in range(3)])
    assert torch.equal(x1.params, expect1) and torch.equal(x2.params, expect2) and index.tolist() == idx
