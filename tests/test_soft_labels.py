"""Per-pair soft labels (``p_chosen``) and margins (``margin``) read from the pair data: parsing and its errors, the
typed containers, the soft losses' hand-derived values, and tiny end-to-end `alignlab rm` / `alignlab train` runs."""

import inspect
import json
import math
import random

import pytest
import torch
from tiny_models import save_tiny

from alignlab.cli import main as cli
from alignlab.config import ConfigError
from alignlab.data.collate import collate_pairs, pair_labels
from alignlab.data.formats import DataError, load_preference_records
from alignlab.data.labels import hard_label, harden
from alignlab.data.tokenize import TokenizedPair, tokenize_pairs
from alignlab.losses import LOSSES, PairLogps
from alignlab.losses import preference as P
from alignlab.losses.objective import preference_objective
from alignlab.losses.reward_model import bradley_terry_loss
from alignlab.training.inputs import read_records

T = torch.tensor
D = torch.float64


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _row(i=0, **kw):
    return {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} | kw


# ---------------------------------------------------------------- parsing and validation


def test_fields_parsed_and_carried_to_batches(tmp_path):
    from tiny_models import tiny_tokenizer

    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go", "p_chosen": 1}
    f = _write(tmp_path / "a.jsonl", [_row(0, p_chosen=0.75, margin=0.5), hh | {"margin": 2}])
    recs, report = load_preference_records(str(f))
    assert [(r.p_chosen, r.margin) for r in recs] == [(0.75, 0.5), (1.0, 2.0)]
    assert isinstance(recs[1].p_chosen, float) and report.labelled == {"p_chosen": 2, "margin": 2}
    assert report.label_fields == ["p_chosen", "margin"]
    pairs, _ = tokenize_pairs(recs, tiny_tokenizer(), 64, 32)
    assert [(p.p_chosen, p.margin) for p in pairs] == [(0.75, 0.5), (1.0, 2.0)]
    batch = collate_pairs(pairs, [0, 1], pad_id=0).to("cpu")
    assert batch.p_chosen.tolist() == [0.75, 1.0] and batch.margin.tolist() == [0.5, 2.0]
    plain, rep = load_preference_records(str(_write(tmp_path / "b.jsonl", [_row(0), _row(1, p_chosen=None)])))
    assert plain[0].p_chosen is None and rep.label_fields == []  # null counts as absent
    bare = [TokenizedPair([1], [2, 9], [3, 9], "x"), TokenizedPair([1], [4, 9], [5, 9], "y")]
    assert pair_labels(bare) == (None, None) and collate_pairs(bare, [0, 1], 0).p_chosen is None
    with pytest.raises(ValueError, match="y: no p_chosen"):
        pair_labels([TokenizedPair([1], [2, 9], [3, 9], "x", p_chosen=0.5), bare[1]])


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"p_chosen": 1.5}, "field 'p_chosen' must be a finite number in \\[0, 1\\], got 1.5"),
        ({"p_chosen": -0.1}, "field 'p_chosen' must be a finite number in \\[0, 1\\]"),
        ({"p_chosen": "0.7"}, "field 'p_chosen' must be a number, got str"),
        ({"p_chosen": True}, "field 'p_chosen' must be a number, got bool"),
        ({"margin": -1}, "field 'margin' must be a finite number >= 0, got -1.0"),
        ({"margin": [1]}, "field 'margin' must be a number, got list"),
    ],
)
def test_bad_values_name_file_line_and_field(tmp_path, extra, message):
    f = _write(tmp_path / "bad.jsonl", [_row(0), "", _row(2, **extra)])
    with pytest.raises(DataError, match=f"^{f}:3: {message}") as err:
        load_preference_records(str(f))
    assert err.value.reason == "bad_label"
    f2 = _write(tmp_path / "bad2.jsonl", [_row(0), _row(2, **extra)])
    recs, report = load_preference_records(str(f2), on_bad="skip")  # counted like any other bad row
    assert len(recs) == 1 and report.skipped == {"bad_label": 1}


def test_nan_and_infinity_rejected(tmp_path):
    for lit in ("NaN", "Infinity"):
        f = tmp_path / "nan.jsonl"
        f.write_text('{"prompt": "a", "chosen": "b", "rejected": "c", "margin": %s}\n' % lit)
        with pytest.raises(DataError, match=f"{f}:1: field 'margin' must be a finite number"):
            load_preference_records(str(f))


def test_mixed_presence_is_an_error_naming_the_first_row_without(tmp_path):
    f = _write(tmp_path / "mixed.jsonl", [_row(0, p_chosen=0.9), _row(1, p_chosen=0.8), _row(2), _row(3)])
    with pytest.raises(DataError, match=rf"^{f}:3: missing field 'p_chosen', which 2 of the 4 .* \(first at {f}:1\)"):
        load_preference_records(str(f))
    with pytest.raises(DataError, match="mixed") as err:  # on_bad=skip does not hide it
        load_preference_records(str(f), on_bad="skip")
    assert err.value.reason == "mixed_labels"
    load_preference_records(f"{f}[:2]")  # a row range with the field in every row is fine
    g = _write(tmp_path / "m2.jsonl", [_row(0, margin=1.0), _row(1, margin=None)])
    with pytest.raises(DataError, match=f"{g}:2: missing field 'margin'"):
        load_preference_records(str(g))


def test_hard_labels_and_harden_command(tmp_path):
    assert [hard_label(p) for p in (0.0, 0.45, 0.46, 0.5, 0.54, 0.55, 1.0)] == [0, 0, None, None, None, 1, 1]
    rows = [_row(0, p_chosen=0.9, margin=1.0), _row(1, p_chosen=0.2), _row(2, p_chosen=0.52), _row(3, p_chosen=0.0)]
    src = _write(tmp_path / "soft.jsonl", rows + [_row(4, chosen="same", rejected="same", p_chosen=0.9)])
    counts = harden(str(src), str(tmp_path / "hard.jsonl"))
    assert counts == {"read": 5, "kept": 3, "swapped": 2, "ties": 1, "unusable": 1}
    out = [json.loads(x) for x in (tmp_path / "hard.jsonl").read_text().splitlines()]
    assert out == [
        _row(0, margin=1.0),
        _row(1, chosen="bad 1", rejected="good 1"),
        _row(3, chosen="bad 3", rejected="good 3"),
    ]


# ---------------------------------------------------------------- losses: hand-derived values


def _logps(n=5, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(n, generator=g, dtype=D) * 3 for _ in range(4)]
    lens = [torch.randint(1, 9, (n,), generator=g) for _ in range(2)]
    if requires_grad:
        t[0].requires_grad_(True)
    return PairLogps(t[0], t[1], lens[0], lens[1], t[2], t[3])


def _swap(p: PairLogps) -> PairLogps:
    return PairLogps(p.rejected, p.chosen, p.rejected_len, p.chosen_len, p.ref_rejected, p.ref_chosen)


SOFT = [
    ("dpo", {}),
    ("dpo_norm", {}),
    ("cdpo", {"label_smoothing": 0.1}),
    ("rdpo", {"length_alpha": 0.05}),
]


def test_registry_says_which_losses_read_soft_labels():
    assert {n for n, s in LOSSES.items() if s.reads_soft_labels} == {name for name, _ in SOFT}
    assert not any(s.reads_margin for s in LOSSES.values())
    for s in LOSSES.values():  # the flag and the function agree
        assert ("soft_label" in inspect.signature(s.fn).parameters) == s.reads_soft_labels, s.name


@pytest.mark.parametrize("name,kw", SOFT)
def test_p1_is_the_hard_loss_and_p0_the_swapped_pair(name, kw):
    fn, p, n = LOSSES[name].fn, _logps(), 5
    hard = fn(p, beta=0.3, **kw)
    assert torch.equal(fn(p, beta=0.3, soft_label=torch.ones(n, dtype=D), **kw), hard)  # exactly
    swapped = fn(_swap(p), beta=0.3, **kw)
    assert torch.allclose(fn(p, beta=0.3, soft_label=torch.zeros(n, dtype=D), **kw), swapped, rtol=0, atol=1e-12)


def test_dpo_soft_values_and_gradient():
    # beta = 1, h = 1: -[0.7 log σ(1) + 0.3 log σ(-1)] = 0.7·0.313262 + 0.3·1.313262
    p = PairLogps(T([1.0], dtype=D), T([0.0], dtype=D), T([1]), T([1]), T([0.0], dtype=D), T([0.0], dtype=D))
    assert P.dpo(p, beta=1.0, soft_label=T([0.7], dtype=D)).item() == pytest.approx(0.613262, abs=1e-6)
    # dL/dz = σ(z) − p: zero at z = 0 for p = 0.5, and −β(p − σ(z)) with respect to h
    for h, q in ((0.0, 0.5), (0.0, 0.9), (2.0, 0.3)):
        c = T([h], dtype=D, requires_grad=True)
        pl = PairLogps(c, T([0.0], dtype=D), T([1]), T([1]), T([0.0], dtype=D), T([0.0], dtype=D))
        P.dpo(pl, beta=0.5, soft_label=T([q], dtype=D)).sum().backward()
        sig = 1 / (1 + math.exp(-0.5 * h))
        assert c.grad.item() == pytest.approx(0.5 * (sig - q), abs=1e-12)
        if q == 0.5:
            assert c.grad.item() == 0.0
    # the form equals conservative DPO with per-pair ε = 1 − p
    q = T([0.8, 0.95], dtype=D)
    pl = _logps(2)
    cd = torch.stack([P.cdpo(_logps(2), beta=0.2, label_smoothing=1 - v)[i] for i, v in enumerate([0.8, 0.95])])
    assert torch.allclose(P.dpo(pl, beta=0.2, soft_label=q), cd, atol=1e-12)
    # cdpo composes: ε flips the soft label, p' = (1−ε)p + ε(1−p)
    eps = 0.1
    assert torch.allclose(
        P.cdpo(pl, beta=0.2, label_smoothing=eps, soft_label=q),
        P.dpo(pl, beta=0.2, soft_label=(1 - eps) * q + eps * (1 - q)),
        atol=1e-12,
    )


def test_bradley_terry_margin_shifts_delta_and_p_half_is_flat_at_the_margin():
    rc, rr, m = T([1.2, -0.4], dtype=D), T([0.2, 0.1], dtype=D), T([0.5, 2.0], dtype=D)
    q = T([0.3, 0.8], dtype=D)
    assert torch.allclose(
        bradley_terry_loss(rc, rr, margin=m, soft_label=q), bradley_terry_loss(rc - m, rr, soft_label=q)
    )
    x = T([0.7], dtype=D, requires_grad=True)  # r_c − r_r = m: Δ = 0
    bradley_terry_loss(x, T([0.2], dtype=D), margin=T([0.5], dtype=D), soft_label=T([0.5])).sum().backward()
    assert x.grad.item() == 0.0


@pytest.mark.parametrize("name", sorted(n for n, s in LOSSES.items() if not s.reads_soft_labels))
def test_losses_without_a_soft_form_refuse_soft_labels(name):
    with pytest.raises(ValueError, match=f"loss={name} has no soft-label form.*1\\[p > 0.5\\]"):
        preference_objective(_logps(2), name, {}, soft_label=T([0.9, 0.2]))


# ---------------------------------------------------------------- the recipes end to end


WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]


def _marker_rows(n, seed=0, **fields):
    """Pairs whose chosen response ends with "ok!" (never the rejected one); ``fields`` added to every row."""
    rng = random.Random(seed)

    def words(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [
        {"prompt": words(2), "chosen": words(rng.randint(1, 3)) + " ok!", "rejected": words(rng.randint(2, 4))} | fields
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("soft") / "tiny")


COMMON = ["report_to=none", "cpu=true", "gradient_checkpointing=false", "lora=false", "lr_scheduler=constant"]
COMMON += ["warmup_ratio=0", "max_length=48", "max_prompt_length=24"]


def test_rm_end_to_end_learns_the_soft_labels(tmp_path, tiny_dir):
    """p_chosen = 0.1 on every row: the RM learns to prefer the *rejected* response, so accuracy (always against
    the file's chosen/rejected order) falls; eval_loss uses the eval rows' own p and margin."""
    data = _write(tmp_path / "soft.jsonl", _marker_rows(32, p_chosen=0.1, margin=0.25))
    out = tmp_path / "rm"
    argv = [f"model={tiny_dir}", f"data={data}", f"eval_data={data}[:16]", f"output_dir={out}", "max_steps=8"]
    assert cli(["rm", *argv, *COMMON, "per_device_batch_size=8", "learning_rate=1e-2"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_accuracy" in r]
    assert evals[-1]["eval_accuracy"] <= 0.2 and evals[-1]["eval_margin"] < 0  # prefers the rejected side
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    report = json.loads((out / "data_report.json").read_text())
    assert report["load"]["labels"] == {"p_chosen": 32, "margin": 32}
    assert report["eval"]["load"]["labels"] == {"p_chosen": 16, "margin": 16}


def test_train_dpo_end_to_end_with_soft_labels(tmp_path, tiny_dir):
    """loss=dpo reads p_chosen: with p = 0 everywhere the policy moves towards the *rejected* responses."""
    data = _write(tmp_path / "soft.jsonl", _marker_rows(8, p_chosen=0.0))
    out = tmp_path / "dpo"
    argv = [f"model={tiny_dir}", f"data={data}", f"output_dir={out}", "loss=dpo", "max_steps=4", "beta=0.5"]
    assert cli(["train", *argv, *COMMON, "per_device_batch_size=8", "learning_rate=3e-3"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # step 0: policy = reference, h = 0
    assert rows[-1]["rewards/margins"] < 0 and rows[-1]["loss"] < math.log(2)
    assert json.loads((out / "data_report.json").read_text())["load"]["labels"] == {"p_chosen": 8, "margin": 0}


def test_train_refuses_labels_its_loss_does_not_read(tmp_path):
    from tiny_models import tiny_train_config

    soft = _write(tmp_path / "soft.jsonl", _marker_rows(8, p_chosen=0.7))
    with pytest.raises(ConfigError, match=f"data {soft}: loss=ipo has no soft-label form.*alignlab.data.labels"):
        read_records(tiny_train_config(tmp_path, data=str(soft), loss="ipo"))
    with pytest.raises(ConfigError, match="loss=simpo has no soft-label form"):
        read_records(tiny_train_config(tmp_path, data=str(soft), loss="simpo"))
    read_records(tiny_train_config(tmp_path, data=str(soft), loss="cdpo"))  # reads it
    margins = _write(tmp_path / "margin.jsonl", _marker_rows(8, margin=1.0))
    with pytest.raises(ConfigError, match="loss=dpo does not read per-pair margins.*remove the field"):
        read_records(tiny_train_config(tmp_path, data=str(margins), loss="dpo"))
    assert cli(["train", "model=x", f"data={soft}", "loss=slic", "report_to=none", f"output_dir={tmp_path}/r"]) == 2
