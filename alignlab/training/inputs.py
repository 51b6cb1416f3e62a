"""The preference data of a training run: the training set (``data``) and the held-out set (``eval_data``).

Both follow the same rules (docs/data.md): malformed rows stop with file, line and field (``on_bad=skip``: counted
instead), and an empty file or too few usable pairs stop here, before any model is loaded. What was read,
skipped and truncated goes into data_report.json (the held-out set under ``eval``). ``cfg`` is a TrainConfig or
an RMConfig. The optional per-pair fields ``p_chosen`` and ``margin`` (alignlab.data.labels) are read by the RM
loss; for a TrainConfig, a field its loss does not read stops here (``check_label_use``), before any model loads.
"""

from __future__ import annotations

from alignlab.config import ConfigError
from alignlab.data.formats import load_preference_records
from alignlab.data.tokenize import TokenizedPair, tokenize_pairs
from alignlab.losses.registry import get_loss, label_error


def check_enough(cfg, n: int, world: int, what: str) -> None:
    """Stop with the file and the counts when the data cannot fill one global batch."""
    g = cfg.global_batch * world
    if n < g:
        raise ConfigError(
            f"{cfg.data}: {what}: {n} usable pair(s) cannot fill one global batch of {g} "
            f"(per_device_batch_size {cfg.per_device_batch_size} x grad_accum {cfg.grad_accum} x "
            f"{world} process(es))"
        )


def check_eval_enough(cfg, n: int, world: int, what: str) -> None:
    """Stop when the held-out set cannot give every process one pair (each rank evaluates a shard)."""
    if n < max(world, 1):
        raise ConfigError(
            f"{cfg.eval_data}: {what}: {n} usable pair(s) for evaluation; eval_data needs at least one per process "
            f"({world} process(es))"
        )


def check_label_use(cfg, report, what: str) -> None:
    """A TrainConfig whose loss does not read the data's p_chosen / margin fields: ConfigError naming the data and
    what to do. Configs without a ``loss`` (alignlab rm) read both."""
    loss = getattr(cfg, "loss", None)
    fields = report.label_fields
    if loss is None or not fields:
        return
    why = label_error(get_loss(loss), "p_chosen" in fields, "margin" in fields)
    if why:
        raise ConfigError(f"{what} {report.spec}: {why}")


def read_records(cfg, world: int = 1):
    """The preference records of ``cfg.data``; an empty file or too few usable pairs fail here, before any
    model is loaded, naming the file and the counts."""
    records, report = load_preference_records(cfg.data, split=cfg.split, limit=cfg.limit, on_bad=cfg.on_bad)
    if not records:
        raise ConfigError(f"{report.summary()}: no usable preference pairs")
    check_label_use(cfg, report, "data")
    check_enough(cfg, len(records), world, report.summary())
    return records, report


def read_eval_records(cfg, world: int = 1):
    """The preference records of ``cfg.eval_data`` (split ``eval_split``, every row: ``limit`` is for training),
    with the training data's rules for bad rows; an empty file fails here, before any model is loaded."""
    records, report = load_preference_records(cfg.eval_data, split=cfg.eval_split, on_bad=cfg.on_bad)
    if not records:
        raise ConfigError(f"eval_data {report.summary()}: no usable preference pairs")
    check_label_use(cfg, report, "eval_data")
    check_eval_enough(cfg, len(records), world, report.summary())
    return records, report


def data_info(load_report, tok_report) -> dict:
    """One data_report.json section: what was read, kept and skipped, and what tokenization truncated."""
    return {
        "load": {
            "read": load_report.read,
            "kept": load_report.kept,
            "skipped": load_report.skipped,
            "skipped_examples": load_report.examples,
            "labels": load_report.labelled,
        },
        "tokenize": tok_report.as_metrics() | {"dropped_sources": tok_report.dropped_sources[:20]},
    }


def prepare_data(cfg, tokenizer, records=None, load_report=None, world: int = 1) -> tuple[list[TokenizedPair], dict]:
    """Tokenized training pairs and their data_report.json section (reads ``cfg.data`` if no records are given)."""
    if records is None:
        records, load_report = read_records(cfg, world)
    pairs, tok_report = tokenize_pairs(records, tokenizer, cfg.max_length, cfg.max_prompt_length)
    check_enough(cfg, len(pairs), world, f"after tokenization ({tok_report.summary()})")
    return pairs, data_info(load_report, tok_report)


def prepare_eval_data(cfg, tokenizer, records, load_report, world: int = 1) -> tuple[list[TokenizedPair], dict]:
    """Tokenized held-out pairs (the training lengths and truncation) and their data_report.json section."""
    pairs, tok_report = tokenize_pairs(records, tokenizer, cfg.max_length, cfg.max_prompt_length)
    check_eval_enough(cfg, len(pairs), world, f"after tokenization ({tok_report.summary()})")
    return pairs, data_info(load_report, tok_report)
