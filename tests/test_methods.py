"""Pruning methods on tiny real problems (no mocks)."""

import torch
from torch import nn

from trainables.methods import ADMM, Magnitude, MaskedFinetune, admm_update, gradual_sparsity
from trainables.sparsity import make_sparsity_set

torch.set_num_threads(1)


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 12, generator=g)
    w_true = torch.randn(4, 12, generator=g)
    return x, x @ w_true.T


def _train(method, params, model, x, y, opt, steps, after=None):
    """The loop of trainables.trial.train_epoch on a regression; ``after(step)`` runs after each step."""
    method.on_phase_start(params, steps)
    for s in range(1, steps + 1):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        method.before_step(params)
        opt.step()
        method.after_step(params, s)
        if after is not None:
            after(s)


def test_gradual_schedule_endpoints_and_monotone():
    vals = [gradual_sparsity(t, 100, 0.8) for t in range(101)]
    assert vals[0] == 0.0 and abs(vals[-1] - 0.8) < 1e-12
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert abs(gradual_sparsity(50, 100, 0.8, 0.2) - (0.8 - 0.6 * 0.125)) < 1e-12


def test_admm_update_matches_definition():
    sset = make_sparsity_set("uniform", 0.5)
    W, U, Zp = [torch.randn(3, 4)], [torch.randn(3, 4)], [torch.randn(3, 4)]
    Z, U2, primal, dual = admm_update(W, U, sset.project, Zp, rho=2.0)
    assert torch.equal(Z[0], sset.project([W[0] + U[0]])[0])
    assert torch.allclose(U2[0], U[0] + W[0] - Z[0], atol=1e-6)
    assert torch.isclose(primal, ((W[0] - Z[0]) ** 2).sum())
    assert torch.isclose(dual, 4.0 * ((Z[0] - Zp[0]) ** 2).sum())


def test_admm_dual_moves_and_primal_residual_falls():
    torch.manual_seed(0)
    x, y = _problem()
    model = nn.Linear(12, 4, bias=False)
    params = [model.weight]
    method = ADMM(make_sparsity_set("uniform", 0.5), rho=0.5, rho_growth=1.3, rho_max=5.0, interval=20, unit="step")
    opt = torch.optim.Adam(params, lr=0.02)
    primal = {}
    # updates every 20 steps: 21 of them, 20 before the last step
    _train(method, params, model, x, y, opt, 421, after=lambda s: primal.setdefault(s, float(method.primal))
           if s == 20 else None)
    first = primal[20]
    assert float(method.U[0].abs().sum()) > 0  # U really changes (DESIGN rule 3)
    assert float(method.primal) < 0.1 * first
    assert method.rho == 5.0
    # projecting the ADMM solution gives a point of S
    z = make_sparsity_set("uniform", 0.5).project([model.weight.detach()])[0]
    assert int((z == 0).sum()) == 24


def test_per_step_keeps_w_in_s_after_each_step():
    torch.manual_seed(1)
    x, y = _problem(1)
    model = nn.Linear(12, 4, bias=False)
    params = [model.weight]
    method = Magnitude(make_sparsity_set("uniform", 0.75), "per_step")
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    zeros = []
    _train(method, params, model, x, y, opt, 30, after=lambda s: zeros.append(int((model.weight == 0).sum())))
    assert len(zeros) == 30 and min(zeros) >= 36


def test_gradual_reaches_target_and_keeps_pruned():
    torch.manual_seed(2)
    x, y = _problem(2)
    model = nn.Linear(12, 4, bias=False)
    params = [model.weight]
    method = Magnitude(make_sparsity_set("uniform", 0.5), "gradual", gradual_interval=5,
                       make_set=lambda s: make_sparsity_set("uniform", s))
    opt = torch.optim.Adam(params, lr=0.01)
    history = [torch.zeros_like(model.weight, dtype=torch.bool)]
    _train(method, params, model, x, y, opt, 40, after=lambda s: history.append(model.weight.detach() == 0))
    assert len(history) == 41
    for before, after in zip(history, history[1:]):
        assert bool((after | ~before).all())  # a pruned weight never comes back
    assert int(history[-1].sum()) == 24


def _check_masked_finetune(make_opt):
    torch.manual_seed(3)
    x, y = _problem(3)
    model = nn.Linear(12, 4, bias=False)
    params = [model.weight]
    mask = make_sparsity_set("uniform", 0.5).masks([model.weight.detach()])[0]
    with torch.no_grad():
        model.weight.mul_(mask)
    method = MaskedFinetune([mask.float()])
    opt = make_opt(params)
    before = model.weight.detach().clone()
    _train(method, params, model, x, y, opt, 200)
    assert bool((model.weight[~mask] == 0).all())
    assert not torch.equal(before[mask], model.weight.detach()[mask])


def test_masked_finetune_keeps_zeros_under_adam_weight_decay():
    _check_masked_finetune(lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1))


def test_masked_finetune_keeps_zeros_under_sgd_nesterov():
    _check_masked_finetune(lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4))


def test_one_shot_keeps_mask():
    torch.manual_seed(4)
    x, y = _problem(4)
    model = nn.Linear(12, 4, bias=False)
    params = [model.weight]
    method = Magnitude(make_sparsity_set("global", 0.5), "one_shot")
    opt = torch.optim.Adam(params, lr=0.01)
    method.on_phase_start(params, 50)
    zeros0 = (model.weight == 0).clone()
    _continue = lambda s: None  # noqa: E731
    for s in range(1, 51):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        method.before_step(params)
        opt.step()
        method.after_step(params, s)
    assert int(zeros0.sum()) == 24
    assert bool((model.weight[zeros0] == 0).all())
