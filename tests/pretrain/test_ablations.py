"""Each ablation switch of the paper's empirical study changes exactly what it claims (PROTOCOL.md section 2)."""

import math

import pytest
import torch
from torch import nn

from core.checkpoint import read_checkpoint
from core.config import ConfigError, load_config
from core.lars import LARS
from core.images import image_folder
from core.models import HEAD_BN, SimSiam, build_model
from pretrain.data import TwoViewDataset, collate_skipping, simsiam_augmentation
from pretrain.loss import cross_entropy_similarity, simsiam_loss
from pretrain.objective import Objective, check_switches
from pretrain.loop import build_optimizer, main
from tests.helpers import PRETRAIN_DEFAULTS, tiny_config

D, B = 16, 6  # output dim and batch of the stub tensors


def cfg_with(*overrides):
    return load_config(PRETRAIN_DEFAULTS, ["arch=resnet18", f"model.dim={D}", "model.pred_dim=4", *overrides])


class Stub(nn.Module):
    """A 'network' returning fixed leaf tensors, so the gradients the loss sends to p and z are visible."""

    def __init__(self, seed=0, rows=B):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.out = [torch.randn(rows, D, generator=g).requires_grad_() for _ in range(4)]  # p1 p2 z1 z2

    def forward(self, x1, x2):
        return tuple(self.out)


def objective(*overrides, model=None, samples=10, steps_per_epoch=5):
    cfg = cfg_with(*overrides)
    return Objective(cfg, model or build_model(cfg), samples, steps_per_epoch)


def tiny_model_and_batch(*overrides, seed=0):
    cfg = cfg_with(*overrides)
    torch.manual_seed(seed)
    model = build_model(cfg)
    x1, x2 = torch.randn(B, 3, 32, 32), torch.randn(B, 3, 32, 32)
    return cfg, model, x1, x2


# ---------------------------------------------------------------- stop-gradient
@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stop_gradient_switch_decides_whether_the_targets_get_gradient(stop_gradient):
    net = Stub()
    loss, _, terms = objective(f"model.stop_gradient={str(stop_gradient).lower()}")(net, None, None, None, 0)
    loss.backward()
    p1, p2, z1, z2 = net.out
    assert [(p is p1 and t is z2) or (p is p2 and t is z1) for p, t in terms] == [True, True]
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    if stop_gradient:
        assert z1.grad is None and z2.grad is None
    else:
        assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_default_objective_is_the_papers_loss():
    net = Stub()
    loss, z1, _ = objective()(net, None, None, None, 0)
    assert torch.equal(loss, simsiam_loss(*net.out)) and z1 is net.out[2]


# ---------------------------------------------------------------- predictor (Table 1)
def test_fixed_predictor_does_not_move_while_the_encoder_does():
    cfg, model, x1, x2 = tiny_model_and_batch("model.predictor=fixed_random")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, cfg, 0.1)
    loss, _, _ = Objective(cfg, model, 10, 5)(model, x1, x2, None, 0)
    loss.backward()
    opt.step()
    after = model.state_dict()
    pred = [k for k in before if k.startswith("predictor.") and before[k].is_floating_point()]
    assert pred and all(torch.equal(before[k], after[k]) for k in pred if "running" not in k)
    assert not torch.equal(before["encoder.conv1.weight"], after["encoder.conv1.weight"])


def test_identity_predictor_predicts_z_itself():
    cfg, model, x1, x2 = tiny_model_and_batch("model.predictor=identity")
    assert not list(model.predictor.parameters())
    p1, p2, z1, z2 = model(x1, x2)
    assert torch.equal(p1, z1) and torch.equal(p2, z2)
    assert len(build_optimizer(model, cfg, 0.1).param_groups) == 1  # only the encoder's group is left


def test_decayed_predictor_lr_is_the_fix_pred_lr_switch():
    from core.schedule import set_lr

    for fix, expected in ((True, 0.1), (False, 0.05)):
        cfg, model, _, _ = tiny_model_and_batch(f"optim.fix_pred_lr={str(fix).lower()}")
        opt = build_optimizer(model, cfg, 0.1)
        set_lr(opt, 0.05, 0.1)
        assert [g["lr"] for g in opt.param_groups] == [0.05, expected]


# ---------------------------------------------------------------- BN in the heads (Table 3)
def _bns(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm1d)]


@pytest.mark.parametrize("variant", list(HEAD_BN))
def test_head_bn_variants_have_the_bn_layers_table_3_lists(variant):
    hidden, proj_out, pred_out = HEAD_BN[variant]
    model = SimSiam("resnet18", D, 4, 3, head_bn=variant)
    proj, pred = model.encoder.fc, model.predictor
    assert len(_bns(proj)) == 2 * hidden + proj_out and len(_bns(pred)) == hidden + pred_out
    assert isinstance(proj[-1], nn.BatchNorm1d) == proj_out and isinstance(pred[-1], nn.BatchNorm1d) == pred_out
    assert all(not bn.affine for bn in (proj[-1:] if proj_out else []))  # the output BN has no affine
    linears = [m for m in [*proj, *pred] if isinstance(m, nn.Linear)]
    # A linear feeding a BN drops its bias; the projector's last one keeps a bias, frozen before the output BN.
    assert [m.bias is not None for m in linears] == [not hidden, not hidden, True, not hidden, True]
    assert proj[-2 if proj_out else -1].bias.requires_grad == (not proj_out)


# ---------------------------------------------------------------- similarity
def test_cross_entropy_similarity_known_answers_and_stop_gradient():
    zeros = torch.zeros(3, D)
    # uniform softmax on both sides: the cross-entropy is log(d)
    assert cross_entropy_similarity(zeros, zeros).item() == pytest.approx(math.log(D))
    z = torch.tensor([[100.0] + [0.0] * (D - 1)])  # one-hot target
    p = torch.tensor([[2.0] + [0.0] * (D - 1)])
    assert cross_entropy_similarity(p, z).item() == pytest.approx(-torch.log_softmax(p, 1)[0, 0].item(), rel=1e-5)
    net = Stub()
    objective("loss.similarity=cross_entropy")(net, None, None, None, 0)[0].backward()
    assert net.out[2].grad is None and net.out[0].grad.abs().sum() > 0


# ---------------------------------------------------------------- symmetry
def test_asymmetric_uses_one_term_and_2x_sampling_two():
    net = Stub()
    loss, _, terms = objective("loss.symmetry=asymmetric")(net, None, None, None, 0)
    p1, _, _, z2 = net.out
    assert len(terms) == 1 and terms[0][0] is p1 and terms[0][1] is z2
    loss.backward()
    assert net.out[1].grad is None  # p2 takes no part

    net2 = Stub(rows=2 * B)  # two view pairs per image: the batch holds 2B rows, pair after pair
    loss, _, terms = objective("loss.symmetry=asymmetric_2x")(net2, None, None, None, 0)
    assert len(terms) == 2 and [t[0].shape[0] for t in terms] == [B, B]
    assert torch.equal(terms[1][0], net2.out[0][B:]) and torch.equal(terms[1][1], net2.out[3][B:])
    assert loss.item() == pytest.approx(-torch.cosine_similarity(net2.out[0], net2.out[3]).mean().item(), rel=1e-6)


def test_2x_sampling_draws_two_independent_pairs_per_image(tiny_folder):
    ds = TwoViewDataset(image_folder(tiny_folder), simsiam_augmentation(16), seed=0, pairs=2)
    items = [ds[i] for i in range(3)]
    views, index = items[1]
    assert len(views) == 4 and index == 1 and not torch.equal(views[0], views[2])
    x1, x2, skipped, idx = collate_skipping(items)
    assert x1.shape[0] == x2.shape[0] == 6 and skipped == 0 and idx.tolist() == [0, 1, 2]
    assert torch.equal(x1[4], items[1][0][2]) and torch.equal(x2[4], items[1][0][3])  # pair 2 of image 1
    one = TwoViewDataset(image_folder(tiny_folder), simsiam_augmentation(16), seed=0)[1][0]
    assert torch.equal(one[0], views[0]) and torch.equal(one[1], views[1])  # pair 1 = the 1-pair views


# ---------------------------------------------------------------- EM hypothesis (section 5)
def test_kstep_targets_stay_fixed_for_k_steps_then_refresh():
    cfg, model, x1, x2 = tiny_model_and_batch("loss.target=kstep", "loss.kstep=3")
    obj = Objective(cfg, model, 10, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    targets, online = [], []
    for step in range(5):
        loss, z1, terms = obj(model, x1, x2, None, step)
        targets.append(terms[1][1].detach().clone())  # the target of D(p2, .): eta from view 1
        online.append(z1.detach().clone())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(targets[0], targets[1]) and torch.equal(targets[1], targets[2])  # steps 0-2: one copy
    assert not torch.equal(targets[2], targets[3]) and torch.equal(targets[3], targets[4])  # refreshed at 3
    assert torch.equal(targets[3], online[3])  # the refreshed copy is the encoder of that step
    assert not torch.equal(targets[2], online[2])  # ... while an unrefreshed one lags behind


def test_one_step_alternation_is_simsiam():
    cfg, model, x1, x2 = tiny_model_and_batch("loss.target=kstep", "loss.kstep=1")
    loss_k, _, _ = Objective(cfg, model, 10, 5)(model, x1, x2, None, 7)
    loss_s, _, _ = Objective(cfg_with(), model, 10, 5)(model, x1, x2, None, 7)
    assert torch.equal(loss_k, loss_s)


def test_kstep_zero_refreshes_once_per_epoch():
    obj = objective("loss.target=kstep", "loss.kstep=0", steps_per_epoch=7)
    assert obj.every == 7


def test_moving_average_targets_follow_each_image():
    obj = objective("loss.target=moving_average", "model.predictor=identity", "loss.ma_momentum=0.8", samples=10)
    unit = lambda z: torch.nn.functional.normalize(z, dim=1)  # noqa: E731
    first, second = Stub(seed=1), Stub(seed=2)
    index = torch.tensor([0, 3, 4, 5, 8, 9])
    _, _, terms = obj(first, None, None, index, 0)
    eta0 = (unit(first.out[2]) + unit(first.out[3])).detach() / 2  # first visit: the fresh estimate itself
    torch.testing.assert_close(terms[0][1], eta0)
    assert obj.seen.tolist() == [i in index.tolist() for i in range(10)]
    _, _, terms = obj(second, None, None, index, 1)
    eta1 = 0.8 * eta0 + 0.2 * (unit(second.out[2]) + unit(second.out[3])).detach() / 2
    torch.testing.assert_close(terms[0][1], eta1)
    torch.testing.assert_close(obj.bank[index], eta1)
    assert terms[0][0] is second.out[0] and not terms[0][1].requires_grad  # eta is a constant target


# ---------------------------------------------------------------- optimizer, batch, bad switches
def test_lars_switch():
    cfg, model, _, _ = tiny_model_and_batch("optim.optimizer=lars", "optim.lars_trust=0.002")
    opt = build_optimizer(model, cfg, 0.3)
    assert isinstance(opt, LARS) and opt.param_groups[0]["trust_coefficient"] == 0.002
    assert isinstance(build_optimizer(model, cfg_with(), 0.3), torch.optim.SGD)


@pytest.mark.parametrize("overrides, message", [
    (["model.head_bn=some"], "model.head_bn must be one of none, hidden, default, all"),
    (["loss.symmetry=both"], "loss.symmetry must be one of"),
    (["optim.optimizer=adam"], "optim.optimizer must be one of sgd, lars"),
    (["loss.target=kstep", "model.stop_gradient=false"], "needs loss.target=online"),
    (["loss.target=moving_average", "loss.symmetry=asymmetric_2x"], "one target per image"),
])
def test_bad_switches_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_switches(cfg_with(*overrides))


def test_kstep_run_resumes_exactly(tmp_path, tiny_folder):
    # The k-step copy is part of the checkpoint: stopping inside a window (step 5 of k=3 windows) and
    # resuming ends with the weights of a straight run.
    switches = {"loss.target": "kstep", "loss.kstep": 3}
    main(tiny_config(tmp_path / "straight", tiny_folder, **switches))
    main(tiny_config(tmp_path / "resumed", tiny_folder, **switches, **{"train.stop_after_steps": 5}))
    main(tiny_config(tmp_path / "resumed", tiny_folder, **switches))
    a = read_checkpoint(tmp_path / "straight" / "checkpoint_0002.pth.tar")
    b = read_checkpoint(tmp_path / "resumed" / "checkpoint_0002.pth.tar")
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    assert all(torch.equal(v, b["objective"]["target_encoder"][k]) for k, v in a["objective"]["target_encoder"].items())


def _bank_worker(rank: int, init_file: str, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        obj = objective("loss.target=moving_average", "model.predictor=identity", samples=12)
        # Step 1: rank 0 sees images 0-5, rank 1 images 6-11; step 2 swaps the halves (a new epoch's shuffle).
        for step, indices in enumerate(([0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11])):
            own = indices if rank == 0 else [i + 6 if i < 6 else i - 6 for i in indices]
            obj(Stub(seed=10 * step + rank), None, None, torch.tensor(own), step)
        results[rank] = (obj.bank.clone(), obj.seen.clone())
    finally:
        dist.destroy_process_group()


def test_moving_average_bank_is_identical_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_bank_worker, args=(str(tmp_path / "pg"), results), nprocs=2)
    (bank0, seen0), (bank1, seen1) = results[0], results[1]
    assert seen0.all() and seen1.all()
    assert torch.equal(bank0, bank1)  # each rank applied both ranks' updates
    # image 0: first seen on rank 0 (stub seed 0), then on rank 1 (seed 11): one moving-average step
    unit = lambda z: torch.nn.functional.normalize(z, dim=1)  # noqa: E731
    a, b = Stub(seed=0).out, Stub(seed=11).out
    eta0 = (unit(a[2][0:1]) + unit(a[3][0:1])) / 2
    fresh = (unit(b[2][0:1]) + unit(b[3][0:1])) / 2  # at step 2 rank 1 holds images 0-5 in rows 0-5
    torch.testing.assert_close(bank0[0:1], 0.8 * eta0.detach() + 0.2 * fresh.detach())
