"""Hand-computed values from docs/conventions.md L6 for every loss."""

import math

import pytest
import torch

from alignlab.losses import preference as L
from alignlab.losses.objective import preference_objective
from alignlab.losses.types import PairLogps


def ref_batch(**kw) -> PairLogps:
    # policy chosen -10, rejected -15; reference chosen -12, rejected -14; |y_w|=4, |y_l|=5 -> h = 3
    d = dict(
        chosen=torch.tensor([-10.0], dtype=torch.float64),
        rejected=torch.tensor([-15.0], dtype=torch.float64),
        chosen_len=torch.tensor([4]),
        rejected_len=torch.tensor([5]),
        ref_chosen=torch.tensor([-12.0], dtype=torch.float64),
        ref_rejected=torch.tensor([-14.0], dtype=torch.float64),
    )
    d.update(kw)
    return PairLogps(**d)


def at_h(h: float) -> PairLogps:
    z = torch.zeros(1, dtype=torch.float64)
    return PairLogps(
        torch.tensor([h], dtype=torch.float64), z.clone(), torch.tensor([4]), torch.tensor([4]), z.clone(), z.clone()
    )


def test_dpo_reference_batch():
    out = preference_objective(ref_batch(), "dpo", {"beta": 0.1})
    assert out.losses.item() == pytest.approx(0.554355, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.2)
    assert out.rejected_rewards.item() == pytest.approx(-0.1)


def test_dpo_gradient_wrt_margin():
    h = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    z = torch.zeros(1, dtype=torch.float64)
    loss = L.dpo(PairLogps(h, z, torch.tensor([1]), torch.tensor([1]), z, z), beta=0.1)
    loss.backward()
    assert h.grad.item() == pytest.approx(-0.042556, abs=1e-6)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5])
def test_dpo_at_zero(beta):
    assert L.dpo(at_h(0.0), beta=beta).item() == pytest.approx(math.log(2), abs=1e-9)


def test_dpo_at_beta_h_one():
    assert L.dpo(at_h(10.0), beta=0.1).item() == pytest.approx(0.313262, abs=1e-6)


@pytest.mark.parametrize("eps,val", [(0.1, 0.584355), (0.25, 0.629355)])
def test_cdpo_values_and_identity(eps, val):
    p = ref_batch()
    got = L.cdpo(p, beta=0.1, label_smoothing=eps)
    assert got.item() == pytest.approx(val, abs=1e-6)
    assert abs(got.item() - (L.dpo(p, beta=0.1).item() + eps * 0.3)) < 1e-9
    assert L.cdpo(at_h(0.0), beta=0.1, label_smoothing=eps).item() == pytest.approx(math.log(2), abs=1e-12)


def test_cdpo_rejects_bad_eps():
    with pytest.raises(ValueError):
        L.cdpo(ref_batch(), label_smoothing=0.5)


def test_ipo_conventions():
    p = ref_batch()
    assert L.ipo(p, beta=0.1, ipo_reduction="sum").item() == pytest.approx(4.0, abs=1e-9)
    gpo = L.ipo(p, beta=0.1, beta_convention="gpo", ipo_reduction="sum").item()
    assert gpo == pytest.approx(0.49, abs=1e-9)
    assert gpo == pytest.approx(0.01 * L.ipo(p, beta=0.05, ipo_reduction="sum").item(), abs=1e-9)
    assert L.ipo(p, beta=0.1, ipo_reduction="mean").item() == pytest.approx(18.49, abs=1e-9)  # h̄ = 0.7


@pytest.mark.parametrize("beta,val", [(0.1, 25.0), (0.5, 1.0), (0.05, 100.0)])
def test_ipo_at_zero(beta, val):
    assert L.ipo(at_h(0.0), beta=beta, ipo_reduction="sum").item() == pytest.approx(val)


def test_ipo_equal_length_conversion():
    n, h, beta = 4, 3.0, 0.2
    p = at_h(h)  # both lengths 4
    mean = L.ipo(p, beta=beta, ipo_reduction="mean").item()
    summed = L.ipo(p, beta=beta / n, ipo_reduction="sum").item() / n**2
    assert mean == pytest.approx(3.0625) and summed == pytest.approx(3.0625)


def test_hinge():
    assert L.slic(ref_batch(), beta=0.1).item() == pytest.approx(0.7, abs=1e-9)
    for h in (10.0, 12.0):
        x = torch.tensor([h], dtype=torch.float64, requires_grad=True)
        z = torch.zeros(1, dtype=torch.float64)
        loss = L.slic(PairLogps(x, z, torch.tensor([1]), torch.tensor([1]), z, z), beta=0.1)
        loss.backward()
        assert loss.item() == 0.0 and x.grad.item() == 0.0
    x = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)
    z = torch.zeros(1, dtype=torch.float64)
    L.slic(PairLogps(x, z, torch.tensor([1]), torch.tensor([1]), z, z), beta=0.1).backward()
    assert x.grad.item() == pytest.approx(-0.1)


def test_rdpo():
    p = ref_batch()
    assert torch.equal(L.rdpo(p, beta=0.1, length_alpha=0.0), L.dpo(p, beta=0.1))
    assert L.rdpo(p, beta=0.1, length_alpha=0.01).item() == pytest.approx(0.558623, abs=1e-6)
    assert L.rdpo(p, beta=0.1, length_alpha=0.05).item() == pytest.approx(0.575939, abs=1e-6)
    with pytest.raises(ValueError, match="length_alpha"):
        L.rdpo(p, beta=0.1)


def test_simpo():
    p = ref_batch(ref_chosen=None, ref_rejected=None)
    assert L.simpo(p, beta=2.0, gamma_beta_ratio=0.5).item() == pytest.approx(math.log(2), abs=1e-6)
    assert L.simpo(p, beta=2.0, gamma_beta_ratio=0.25).item() == pytest.approx(0.474077, abs=1e-6)
    assert L.simpo(p, beta=10.0, gamma_beta_ratio=0.3).item() == pytest.approx(0.126928, abs=1e-6)
    out = preference_objective(p, "simpo", {"beta": 2.0, "gamma_beta_ratio": 0.25})
    assert out.chosen_rewards.item() == pytest.approx(-5.0) and out.rejected_rewards.item() == pytest.approx(-6.0)


def test_step0_invariants_random():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(16, generator=g) * 20
    lr = torch.randn(16, generator=g) * 20
    p = PairLogps(lp, lr, torch.full((16,), 5), torch.full((16,), 7), lp.clone(), lr.clone())
    out = preference_objective(p, "dpo", {"beta": 0.1})
    assert torch.all(out.chosen_rewards == 0) and torch.all(out.rejected_rewards == 0)
    assert torch.allclose(out.losses, torch.full((16,), math.log(2)))
    assert (out.chosen_rewards > out.rejected_rewards).float().mean().item() == 0.0


def test_reference_free_drops_reference():
    p = ref_batch()
    rf = preference_objective(p, "dpo", {"beta": 0.1}, reference_free=True).losses
    # h = -10 - (-15) = 5
    assert rf.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))), abs=1e-9)
