"""HF greedy `generate`'s logits processors, for ECLAIR's graph decoder (graph_decoder.py): the
generation_config settings it reproduces, as fixed-shape device operations that a CUDA graph can
capture, and a one-sentence refusal of those it does not reproduce."""
from __future__ import annotations

import torch

_REFUSED = ("guidance_scale", "sequence_bias", "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
            "exponential_decay_length_penalty", "begin_suppress_tokens", "forced_decoder_ids")


def greedy_rules(config) -> dict:
    """The logits processors of HF greedy `generate` for this generation_config, for those this decoder
    reproduces; a setting it does not reproduce is refused rather than silently ignored."""
    for name in _REFUSED:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0, 0, [], {}):
            raise ValueError(f"ECLAIR's graph decoder does not reproduce generation_config.{name}={value!r}; "
                             "use the pytorch generator for this checkpoint.")
    ids = lambda v: None if v is None else ([int(v)] if isinstance(v, int) else [int(t) for t in v])  # noqa: E731
    return {"min_length": int(getattr(config, "min_length", None) or 0),
            "min_new_tokens": int(getattr(config, "min_new_tokens", None) or 0),
            "forced_bos": getattr(config, "forced_bos_token_id", None),
            "forced_eos": ids(getattr(config, "forced_eos_token_id", None)),
            "suppress": ids(getattr(config, "suppress_tokens", None)),
            "remove_invalid": getattr(config, "remove_invalid_values", None) is True}


class GreedyProcessors:
    """greedy_rules(config) over a vocabulary on a device: the forced-token rows and the suppressed
    tokens made once, then applied to each step's scores in HF's order."""

    def __init__(self, rules: dict, vocab: int, device: torch.device):
        on = {"device": device}
        self.rules = rules
        self.vocab = torch.arange(vocab, **on)
        forced = lambda tokens: torch.full((vocab,), float("-inf"), **on).index_fill_(  # noqa: E731
            0, torch.tensor(tokens, **on), 0.0)
        self.bos_row = forced([rules["forced_bos"]]) if rules["forced_bos"] is not None else None
        self.eos_row = forced(rules["forced_eos"]) if rules["forced_eos"] else None
        self.suppress = torch.isin(self.vocab, torch.tensor(rules["suppress"], **on)) if rules["suppress"] else None

    def __call__(self, scores: torch.Tensor, pos: torch.Tensor, limit: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """Scores [B, vocab] of pages at positions `pos` with token limits `limit`; HF's cur_len
        (its input_ids length) is pos + 1 here."""
        rules = self.rules
        if rules["min_length"] or rules["min_new_tokens"]:  # no eos before min_length / min_new_tokens
            no_eos = (pos + 1 < rules["min_length"]) | (pos < rules["min_new_tokens"])
            scores = torch.where(no_eos[:, None] & (self.vocab == eos)[None], float("-inf"), scores)
        if self.bos_row is not None:
            scores = torch.where((pos == 0)[:, None], self.bos_row[None], scores)
        if self.eos_row is not None:
            scores = torch.where((pos + 1 == limit)[:, None], self.eos_row[None], scores)
        if rules["remove_invalid"]:
            info = torch.finfo(scores.dtype)
            scores = torch.nan_to_num(scores, nan=0.0, posinf=info.max, neginf=info.min)
        if self.suppress is not None:
            scores = torch.where(self.suppress[None], float("-inf"), scores)
        return scores
