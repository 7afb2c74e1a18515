"""E5-small-v2 as served: BERT encoder, mean pooling over the attention mask, L2 normalisation."""
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BertModel


class E5Embedder(torch.nn.Module):
    def __init__(self, encoder: BertModel):
        super().__init__()
        self.encoder = encoder

    @classmethod
    def from_folder(cls, folder: Path) -> "E5Embedder":
        """A Hugging Face folder (intfloat/e5-small-v2 layout: config.json, model.safetensors)."""
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
        return cls(BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True))

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1)
