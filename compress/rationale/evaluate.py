"""Task evaluation of a student trained with rationale distillation (or any causal LM): the
`[answer]` prompt only, no rationale generated.

- exact match: greedy generation after the answer prompt, parsed with the task's answer parser;
- choice accuracy (multiple choice): the choice whose answer text " (x) choice" has the highest
  log-likelihood after the prompt (summed over its tokens), as lm-eval-harness scores choices.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from compress.evaluate import adds_bos
from compress.rationale.prompts import answer_text
from compress.rationale.tasks import TaskRecord, answer_matches
from compress.rationale.train import answer_prompt


def _ids(tokenizer: Any, text: str, bos: bool) -> list[int]:
    return ([tokenizer.bos_token_id] if bos else []) + tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _choice_scores(model: Any, tokenizer: Any, record: TaskRecord, bos: bool) -> list[float]:
    prompt = _ids(tokenizer, answer_prompt(record), bos)
    scores = []
    for i, choice in enumerate(record.choices or ()):
        option = TaskRecord(record.id, record.question, choice, record.choices, record.context)
        target = tokenizer(" " + answer_text(option), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + target])
        logp = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
        scores.append(float(logp.gather(1, torch.tensor(target).unsqueeze(1)).sum()))
    return scores


@torch.no_grad()
def evaluate_task(model: Any, tokenizer: Any, records: Sequence[TaskRecord], max_new_tokens: int = 24,
                  progress: bool = False) -> dict[str, Any]:
    """{"exact_match", "choice_accuracy" (multiple choice only), "n"} on RECORDS."""
    model.eval()
    bos = adds_bos(tokenizer)
    exact = choice = 0
    mc = [r for r in records if r.choices]
    it = records
    if progress:
        from tqdm import tqdm

        it = tqdm(records, desc="eval", unit="q", dynamic_ncols=True)
    for r in it:
        ids = torch.tensor([_ids(tokenizer, answer_prompt(r), bos)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        exact += answer_matches(r, text)
        if r.choices:
            scores = _choice_scores(model, tokenizer, r, bos)
            choice += int(max(range(len(scores)), key=scores.__getitem__) == list(r.choices).index(r.answer))
    result: dict[str, Any] = {"n": len(records), "exact_match": exact / max(len(records), 1)}
    if mc:
        result["choice_accuracy"] = choice / len(mc)
    return result
