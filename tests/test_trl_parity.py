"""Cross-check against TRL 1.16.0's DPOTrainer on the real SmolLM2-135M-Instruct (docs/conventions.md L5).

Recipe: fp32, dropout off, 8 Anthropic-HH pairs (the first 8 records of the harmless-base test split that
TRL keeps at this ``max_length``), one batch of all 8 pairs, one plain SGD step (no momentum, constant lr,
no warm-up, no gradient clipping, no accumulation, no gradient checkpointing) in each library.

**TRL's own ids are fed to alignlab.** TRL prepares the dataset (``prompt_ids``/``chosen_ids``/``rejected_ids``
columns of ``trainer.train_dataset``); alignlab's ``TokenizedPair``s are built from exactly those ids, so a
tokenization difference cannot hide (or cause) a loss difference. The collated tensors are asserted to be
identical (input ids, attention mask, completion mask) before any number is compared.

Convention differences found between TRL 1.16.0 and alignlab (also in docs/trl_parity.md):

1. **Completion end.** TRL >= 0.29 tokenizes ``prompt + completion`` *jointly through the chat template*
   and takes the completion as the ids after the common prefix with the tokenized prompt. SmolLM2's template
   renders every turn as ``<|im_start|>assistant\\n{content}<|im_end|>\\n``, so each TRL completion ends with
   ``[<|im_end|> (2), "\\n" (198)]``: the newline *after* EOS is a scored completion token. alignlab's own
   tokenizer (``PairTokenizer``) ends the completion with exactly one EOS and scores nothing after it, so on
   the same text alignlab's |y| is TRL's |y| - 1 and the summed log-probs differ by the log-prob of that
   newline (this changes IPO, whose margin is divided by |y|). The prompt ids and the completion content ids
   are otherwise identical (checked below). alignlab's tokenization audit would reject TRL's completions
   ("exactly one EOS at the end"), so the pairs are built directly as ``TokenizedPair``s.
2. **Truncation.** TRL stores untruncated ids and truncates ``prompt + completion`` in the collator
   (``truncation_mode="keep_start"``: keep the first ``max_length`` tokens), after dropping at dataset
   preparation every example whose prompt alone has >= ``max_length`` tokens. It has no
   ``max_prompt_length``. alignlab left-truncates the prompt to ``max_prompt_length`` and then right-truncates
   each completion; with ``max_prompt_length = max_length - 1`` (every prompt TRL keeps is shorter) that is
   exactly keep_start, so ``truncate_pair(..., max_length, max_length - 1)`` reproduces TRL's sequences.
3. **Reference log-probs.** TRL runs with ``precompute_ref_log_probs=True`` and no ``ref_model``: it scores the
   dataset once with the (untrained) policy, i.e. the same reference alignlab precomputes. Each library
   uses its own reference numbers.
4. **Where the LM head runs** (speed only, values unaffected): on CPU, TRL's fused LM head projects *every*
   position (its compact "scored positions only" path needs Triton on CUDA/XPU) and also computes entropy,
   mean-logit and top-1 metrics; alignlab projects only the positions that score completion tokens.
5. IPO: TRL normalises each log-ratio by ``completion_mask.sum()`` (unshifted), alignlab by the number of
   scored tokens; equal whenever the prompt is non-empty, so alignlab ``ipo`` (azar + mean) == TRL ``ipo``.

The sequence length defaults to 64 tokens (``ALIGNLAB_TRL_PARITY_MAX_LENGTH`` overrides it, e.g. 256): on
the shared 2-core CPU one forward of 16 x 256 tokens of the 135M model takes 10-35 s, and the module runs
2 + 3 x 8 forward-equivalents, so 256 takes 10+ minutes there.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install trl==1.16.0)")

HH_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh_rlhf_harmless_base_test.jsonl.gz"
TRL_VERSION = "1.16.0"
MAX_LENGTH = int(os.environ.get("ALIGNLAB_TRL_PARITY_MAX_LENGTH", "64"))
N_PAIRS = 8
BETA = 0.1
# alignlab loss name <-> TRL loss_type, and an SGD lr giving a clearly visible one-step change of each loss
# (hinge: same gradient direction as DPO at step 0, twice the size; IPO: per-token-mean margins, larger loss).
LOSS_CASES = [("dpo", "sigmoid", 2e-3), ("ipo", "ipo", 2e-4), ("hinge", "hinge", 1e-3)]

LOGP_ATOL = 1e-3
LOSS_ATOL = 1e-4

if not HH_FILE.is_file():
    pytest.skip(f"HH data not found at {HH_FILE}", allow_module_level=True)
if trl.__version__ != TRL_VERSION:
    pytest.skip(
        f"TRL parity is pinned to trl=={TRL_VERSION}; found {trl.__version__} (TRL's DPO changed a lot "
        "between versions, see docs/conventions.md L5)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow


class _Captured:
    """Forward hook on TRL's (fused-LM-head) model: per-sequence summed log-probs of each forward."""

    def __init__(self):
        self.logps: list[torch.Tensor] = []

    def __call__(self, module, args, output):
        lp = getattr(output, "log_probs", None)
        if lp is not None:
            self.logps.append(lp.detach().sum(-1).float().cpu())


def _trl_config(output_dir: str):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=output_dir,
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        disable_dropout=True,
        max_length=MAX_LENGTH,
        truncation_mode="keep_start",
        per_device_train_batch_size=N_PAIRS,
        gradient_accumulation_steps=1,
        max_steps=1,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        weight_decay=0.0,
        loss_type=["sigmoid"],
        beta=BETA,
        precompute_ref_log_probs=True,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        dataloader_drop_last=False,
    )


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    from accelerate import Accelerator
    from datasets import Dataset
    from trl import DPOTrainer

    from alignlab.data.collate import collate_pairs
    from alignlab.data.formats import load_preference_records
    from alignlab.data.tokenize import PairTokenizer, TokenizedPair, TokenizeReport, truncate_pair
    from alignlab.models.loading import load_model_and_tokenizer
    from alignlab.models.scorer import SequenceScorer

    assert trl.__version__ == TRL_VERSION
    base, tok = load_model_and_tokenizer("smollm2-135m-instruct", dtype="float32")
    assert base.dtype == torch.float32
    # Dropout is off in both: TRL calls disable_dropout_in_model; SmolLM2 has no non-zero dropout anyway.
    assert getattr(base.config, "attention_dropout", 0.0) == 0.0
    assert all(m.p == 0.0 for m in base.modules() if isinstance(m, torch.nn.Dropout))

    # The first N_PAIRS records TRL keeps: it drops prompts with >= max_length tokens (keep_start).
    records, _ = load_preference_records(str(HH_FILE), limit=400)
    pt = PairTokenizer(tok)
    kept = [r for r in records if len(pt.prompt_ids(r.prompt)) < MAX_LENGTH][:N_PAIRS]
    assert len(kept) == N_PAIRS
    ds = Dataset.from_list(
        [
            {
                "prompt": r.prompt,
                "chosen": [{"role": "assistant", "content": r.chosen}],
                "rejected": [{"role": "assistant", "content": r.rejected}],
            }
            for r in kept
        ]
    )

    trl_model = copy.deepcopy(base)
    optimizer = torch.optim.SGD(trl_model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    out_dir = tmp_path_factory.mktemp("trl_parity")
    trainer = DPOTrainer(
        model=trl_model,
        args=_trl_config(str(out_dir)),
        train_dataset=ds,
        processing_class=tok,
        optimizers=(optimizer, scheduler),
    )
    train_ds = trainer.train_dataset
    assert len(train_ds) == N_PAIRS, "TRL dropped one of the selected records"
    examples = [train_ds[i] for i in range(N_PAIRS)]
    trl_batch = trainer.data_collator(examples)
    # TRL's step-0 log-probs: its precompute scored the dataset with the untrained policy (compute_ref_log_probs).
    trl_logps0 = torch.cat([trl_batch["ref_chosen_logps"], trl_batch["ref_rejected_logps"]]).float()

    # alignlab pairs from TRL's ids, truncated like TRL's collator (keep_start == truncate_pair with
    # max_prompt_length = max_length - 1, since every kept prompt is shorter than max_length).
    report = TokenizeReport()
    pairs = []
    for i, ex in enumerate(examples):
        cut = truncate_pair(
            list(ex["prompt_ids"]), list(ex["chosen_ids"]), list(ex["rejected_ids"]), MAX_LENGTH, MAX_LENGTH - 1, report
        )
        assert cut is not None
        pairs.append(TokenizedPair(*cut, source=kept[i].source))
    pad_id = tok.pad_token_id
    al_batch = collate_pairs(pairs, list(range(N_PAIRS)), pad_id)

    al_model = copy.deepcopy(base)
    al_model.eval()
    with torch.no_grad():
        al_logps0 = SequenceScorer(al_model)(
            al_batch.input_ids, al_batch.attention_mask, al_batch.completion_mask
        ).sum.float()
    ref_table = torch.stack([al_logps0[:N_PAIRS], al_logps0[N_PAIRS:]], dim=1)  # alignlab's own [N, 2] reference

    return dict(
        base=base,
        tok=tok,
        pt=pt,
        records=kept,
        trainer=trainer,
        trl_model=trl_model,
        trl_batch=trl_batch,
        trl_logps0=trl_logps0,
        examples=examples,
        pairs=pairs,
        al_batch=al_batch,
        al_model=al_model,
        al_logps0=al_logps0,
        ref_table=ref_table,
        pad_id=pad_id,
        report=report,
        accelerator=Accelerator(cpu=True),
    )


@pytest.mark.slow
def test_trl_version_pinned():
    assert trl.__version__ == TRL_VERSION


@pytest.mark.slow
def test_same_sequences_as_trl_collator(parity):
    """alignlab's collate of TRL's ids == TRL's own collated batch, tensor for tensor."""
    trl_b, al_b = parity["trl_batch"], parity["al_batch"]
    assert torch.equal(al_b.input_ids, trl_b["input_ids"])
    assert torch.equal(al_b.attention_mask, trl_b["attention_mask"])
    assert torch.equal(al_b.completion_mask.long(), trl_b["completion_mask"].long())
    assert al_b.completion_mask.sum() > 0


@pytest.mark.slow
def test_tokenization_conventions_documented(parity):
    """The documented differences, checked: same prompt ids; TRL's completion = alignlab's + a trailing "\\n"."""
    tok, pt = parity["tok"], parity["pt"]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    for rec, ex in zip(parity["records"], parity["examples"]):
        assert list(ex["prompt_ids"]) == pt.prompt_ids(rec.prompt), rec.source
        for text, ids in ((rec.chosen, ex["chosen_ids"]), (rec.rejected, ex["rejected_ids"])):
            ids = list(ids)
            assert ids[-2:] == [tok.eos_token_id, newline[0]], (rec.source, ids[-4:])
            assert ids[:-1] == pt.completion_ids(text), rec.source  # alignlab: content + exactly one EOS


@pytest.mark.slow
def test_step0_sequence_logps_match_trl(parity):
    """Per-sequence summed completion log-probs on TRL's ids: alignlab vs TRL's compute_ref_log_probs."""
    diff = (parity["al_logps0"] - parity["trl_logps0"]).abs()
    print(
        f"\n[trl-parity] step-0 summed logps: max |alignlab - TRL| = {diff.max().item():.3e} "
        f"(values {parity['trl_logps0'].min().item():.1f} .. {parity['trl_logps0'].max().item():.1f})"
    )
    assert diff.max().item() <= LOGP_ATOL, diff


def _reset(model, base):
    model.load_state_dict(base.state_dict())
    model.zero_grad(set_to_none=True)


def _alignlab_step(parity, loss: str, lr: float):
    """One alignlab step: accumulate_gradients (the recipe's forward/backward) + the same plain SGD."""
    from alignlab.losses.objective import preference_objective
    from alignlab.models.scorer import SequenceScorer
    from alignlab.recipes.train import TrainConfig
    from alignlab.training.schedule import BatchPlan
    from alignlab.training.step import accumulate_gradients, pair_logps

    model, pairs = parity["al_model"], parity["pairs"]
    _reset(model, parity["base"])
    cfg = TrainConfig(
        loss=loss,
        beta=BETA,
        lora=False,
        gradient_checkpointing=False,
        per_device_batch_size=N_PAIRS,
        grad_accum=1,
        max_length=MAX_LENGTH,
        max_prompt_length=MAX_LENGTH - 1,
        report_to="none",
        cpu=True,
        learning_rate=lr,
        max_grad_norm=0.0,
    )
    plan = BatchPlan(N_PAIRS, N_PAIRS, 1, 1, cfg.seed, [len(p.prompt_ids) + len(p.chosen_ids) for p in pairs])
    scorer = SequenceScorer(model)
    model.train()
    keep, bad = accumulate_gradients(
        cfg.step_settings(), parity["accelerator"], scorer, plan, pairs, parity["ref_table"], parity["pad_id"], 0
    )
    assert not bad
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss0 = keep.loss.mean().item()

    model.eval()
    b = parity["al_batch"]
    with torch.no_grad():
        out = scorer(b.input_ids, b.attention_mask, b.completion_mask)
        ref = torch.cat([parity["ref_table"][:, 0], parity["ref_table"][:, 1]])
        obj = preference_objective(pair_logps(out, N_PAIRS, ref), loss, cfg.loss_params())
    return loss0, obj.losses.mean().item(), out.sum.float()


def _trl_step(parity, loss_type: str, lr: float):
    """One TRL step with trainer.train(max_steps=1), then TRL's compute_loss on the batch with the new weights."""
    trainer, model = parity["trainer"], parity["trl_model"]
    _reset(model, parity["base"])
    trainer.loss_types = [loss_type]
    trainer.args.loss_type = [loss_type]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    trainer.optimizer = optimizer
    trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    hook = _Captured()
    handle = model.register_forward_hook(hook)
    try:
        trainer.train()
        step_log = trainer.state.log_history[0]
        assert step_log["learning_rate"] == pytest.approx(lr)
        model.eval()
        with torch.no_grad():
            batch = {k: v.to(trainer.accelerator.device) for k, v in parity["trl_batch"].items()}
            loss1 = trainer.compute_loss(model, batch).item()
    finally:
        handle.remove()
    assert len(hook.logps) == 2  # the training forward and the post-step forward
    return step_log["loss"], loss1, hook.logps[1]


@pytest.mark.slow
@pytest.mark.parametrize("loss,trl_loss,lr", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_one_sgd_step_matches_trl(parity, loss, trl_loss, lr):
    """Same loss at step 0, same loss and per-sequence log-probs after one SGD step, same updated weights."""
    trl_loss0, trl_loss1, trl_logps1 = _trl_step(parity, trl_loss, lr)
    al_loss0, al_loss1, al_logps1 = _alignlab_step(parity, loss, lr)

    expected0 = {"dpo": math.log(2.0), "ipo": 1.0 / (4 * BETA**2), "hinge": 1.0}[loss]  # policy == reference
    params_trl = dict(parity["trl_model"].named_parameters())
    w_diff = max(
        (p.detach() - params_trl[n].detach()).abs().max().item() for n, p in parity["al_model"].named_parameters()
    )
    w_step = max(
        (p.detach() - b.detach()).abs().max().item()
        for (n, p), b in zip(parity["al_model"].named_parameters(), parity["base"].parameters())
    )
    logp_diff = (al_logps1 - trl_logps1).abs().max().item()
    print(
        f"\n[trl-parity] {loss}: loss0 alignlab {al_loss0:.6f} TRL {trl_loss0:.6f}; after 1 SGD step (lr {lr:g}) "
        f"alignlab {al_loss1:.6f} TRL {trl_loss1:.6f} |diff| {abs(al_loss1 - trl_loss1):.2e}; "
        f"logps |diff| {logp_diff:.2e}; weights max|diff| {w_diff:.2e} (max |update| {w_step:.2e})"
    )

    assert al_loss0 == pytest.approx(expected0, abs=LOSS_ATOL)
    assert abs(al_loss0 - trl_loss0) <= LOSS_ATOL
    # the step is not trivial: the loss moved by far more than the tolerance
    assert abs(trl_loss1 - trl_loss0) > 100 * LOSS_ATOL
    assert abs(al_loss1 - trl_loss1) <= LOSS_ATOL
    assert logp_diff <= LOGP_ATOL
    assert w_step > 0
    assert w_diff <= 1e-3 * w_step
