"""``dwakd lm-eval``: the dwakd lm-eval tasks over the suite's generation seeds, mean ± std like ``dwakd eval``.

lm-eval samples with one seed per run (``--seed``); this loads the model once and runs
``lm_eval.simple_evaluate`` once per seed (random, numpy, torch and few-shot seeds all set to it).
"""

from __future__ import annotations

from dwakd.evaluate import GenConfig, summarise
from dwakd.lm_eval_tasks import PATH

SEEDS = GenConfig().seeds  # 10, 20, 30, 40, 50
# the suite's model loading and prompt encoding: fp32 weights, no BOS added to the prompt
DEFAULT_MODEL_ARGS = {"dtype": "float32", "add_bos_token": False}


def evaluate_seeds(pretrained: str, tasks: list[str], seeds: list[int] = SEEDS, *, limit: int | None = None,
                   batch_size: int = 32, device: str | None = None, model_args: str | dict | None = None,
                   gen_kwargs: str | None = None, metadata: dict | None = None) -> dict:
    """ROUGE-L of an HF causal LM on dwakd tasks/groups, per seed and summarised (mean, std, n) over seeds.

    ``model_args`` (``"k=v,..."`` or a dict) and ``gen_kwargs`` are lm-eval's; ``metadata`` goes to the
    tasks (e.g. ``{"unni_file": ...}``, ``{"max_prompt_tokens": 0}``). Groups (``dwakd``) report the
    unweighted mean of their sets, so their summary is the suite's "Avg" (mean ± std over seeds of the
    per-seed average)."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import simple_parse_args_string

    if isinstance(model_args, str):
        model_args = simple_parse_args_string(model_args)
    args = {**DEFAULT_MODEL_ARGS, **(model_args or {}), "pretrained": pretrained}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = HFLM(batch_size=batch_size, device=device, **args)
    tm = TaskManager(include_path=PATH, include_defaults=False, metadata={**args, **(metadata or {})})
    per_seed: dict[str, dict[str, float]] = {}
    for s in seeds:
        r = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit,
                                    gen_kwargs=gen_kwargs, random_seed=s, numpy_random_seed=s,
                                    torch_random_seed=s, fewshot_random_seed=s, bootstrap_iters=0)
        per_seed[str(s)] = {name: v["rougeL,none"] for name, v in r["results"].items() if "rougeL,none" in v}
    names = list(next(iter(per_seed.values())))
    return {
        "config": {"pretrained": pretrained, "model_args": args, "tasks": list(tasks), "seeds": list(seeds),
                   "limit": limit, "batch_size": batch_size, "device": device, "gen_kwargs": gen_kwargs,
                   "metadata": metadata or {}, "lm_eval": lm_eval.__version__},
        "seeds": per_seed,
        "summary": {n: {"rougeL": summarise([v[n] for v in per_seed.values()])} for n in names},
    }
