"""Caption classification model: DeBERTa-large encoder, CLS pooling, LayerNorm, Linear -> 1 logit.

Built from its config with no download. `DebertaLargeModel()` is the real deberta-large size;
pass a smaller `DebertaConfig` (tests subclass it with a no-argument constructor) to build a
small model of the same architecture.
"""
import torch
from transformers import DebertaConfig, DebertaModel


def deberta_large_config() -> DebertaConfig:
    """microsoft/deberta-large's architecture, written out so nothing downloads."""
    return DebertaConfig(
        vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        max_position_embeddings=512, type_vocab_size=0, initializer_range=0.02, layer_norm_eps=1e-7,
        relative_attention=True, max_relative_positions=-1, pad_token_id=0, position_biased_input=False,
        pos_att_type=["c2p", "p2c"],
    )


class DebertaLargeModel(torch.nn.Module):
    def __init__(self, config: DebertaConfig | None = None):
        super().__init__()
        self.config = config or deberta_large_config()
        self.backbone = DebertaModel(self.config)
        self.norm = torch.nn.LayerNorm(self.config.hidden_size)
        self.head = torch.nn.Linear(self.config.hidden_size, 1)

    def forward(self, input_ids, input_mask, input_token_type_ids=None):
        # DeBERTa-large has type_vocab_size 0: token types are accepted for the original's
        # signature but unused, so the exported graph drops that input.
        hidden = self.backbone(input_ids=input_ids, attention_mask=input_mask).last_hidden_state
        return self.head(self.norm(hidden[:, 0]))


class FoldAverage(torch.nn.Module):
    """Several fold models served as one: the mean of their logits (the original averaged 5 folds)."""

    def __init__(self, folds: list[DebertaLargeModel]):
        super().__init__()
        self.folds = torch.nn.ModuleList(folds)

    def forward(self, input_ids, input_mask, input_token_type_ids=None):
        return torch.stack([fold(input_ids, input_mask) for fold in self.folds]).mean(dim=0)
