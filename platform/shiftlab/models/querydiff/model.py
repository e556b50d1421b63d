"""The QueryDiff segmentation model (Li et al., ICML 2025), built from the paper's description.

x -> frozen ViT + Rein's layer-shared adapters -> 4 maps (strides 4/8/16/32) and per-layer
     token states
  -> agent queries Q (grouped cross-attention over the token states)
  -> [training, guidance on] KL / Huber losses of Q against frozen diffusion features
  -> pixel features cross-attend to Q -> Mask2Former's deformable-attention pixel decoder
  -> Mask2Former decoder -> semantic scores (B, K, H, W) at the input size.

Checkpoints need not hold the frozen ViT: ``QueryDiff.frozen_prefixes`` names the state-dict
prefix of the frozen tensors and ``trainable_state_dict()`` leaves them out.
"""

from __future__ import annotations

import torch
from torch import nn

from shiftlab.config.querydiff import QueryDiffDiffusionConfig, QueryDiffModelConfig
from shiftlab.models.querydiff.agent import AgentQueryBuilder
from shiftlab.models.querydiff.backbone import AdaptedViT, MultiScaleNeck
from shiftlab.models.querydiff.diffusion import DiffusionFeatureExtractor, feature_channels
from shiftlab.models.querydiff.guidance import GuidanceHead
from shiftlab.models.querydiff.head import MaskDecoder, QueryRefiner, semantic_inference
from shiftlab.models.querydiff.pixel_decoder import build_pixel_decoder


class _LazyDiffusion:
    """Builds the extractor on first use; deep copies (an EMA teacher) share this holder."""

    def __init__(self, cfg: QueryDiffDiffusionConfig) -> None:
        self.cfg = cfg
        self.extractor: DiffusionFeatureExtractor | None = None

    def get(self) -> DiffusionFeatureExtractor:
        if self.extractor is None:
            self.extractor = DiffusionFeatureExtractor(self.cfg)
        return self.extractor

    def __deepcopy__(self, memo: dict[int, object]) -> _LazyDiffusion:
        return self


class QueryDiff(nn.Module):
    """``forward(x)`` -> ``logits``, ``features``, ``class_logits``, ``mask_logits``,
    ``aux_outputs`` and, when training with guidance, ``guidance_losses {"kl", "huber"}``."""

    # State-dict prefixes of the frozen tensors (the pretrained ViT: parameters and buffers).
    # They never change during training, so a training checkpoint may leave them out and
    # rebuild them from ``cfg.pretrained`` (see ``trainable_state_dict``).
    frozen_prefixes: tuple[str, ...] = ("backbone.vit.",)

    def __init__(self, cfg: QueryDiffModelConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        dim = cfg.hidden_dim
        self.backbone = AdaptedViT(cfg)
        self.neck = MultiScaleNeck(self.backbone.embed_dim, dim)
        self.agent = AgentQueryBuilder(
            in_dim=self.backbone.embed_dim,
            dim=dim,
            heads=cfg.num_heads,
            depth=self.backbone.depth,
            num_tokens=cfg.adapter_tokens,
            num_queries=cfg.num_queries,
            groups=cfg.query_groups,
        )
        self.refiner = QueryRefiner(dim, cfg.num_heads)
        self.pixel_decoder = build_pixel_decoder(cfg)
        self.decoder = MaskDecoder(
            dim,
            cfg.num_heads,
            cfg.ffn_dim,
            cfg.decoder_layers,
            cfg.num_queries,
            num_classes,
            masked_attention=cfg.masked_attention,
        )
        self.guidance: GuidanceHead | None = None
        # A plain attribute, not a submodule: the frozen diffusion weights stay out of
        # state_dict (checkpoints), .parameters(), DDP and every optimizer group. Built on the
        # first training forward, so inference (evaluation, exports) never loads SD-2.
        self._diffusion: _LazyDiffusion | None = None
        if cfg.guidance:
            self._diffusion = _LazyDiffusion(cfg.diffusion)
            self.guidance = GuidanceHead(dim, feature_channels(cfg.diffusion))

    @property
    def diffusion(self) -> DiffusionFeatureExtractor | None:
        """The frozen diffusion feature extractor (built here on first access)."""
        return self._diffusion.get() if self._diffusion is not None else None

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        size = (x.shape[-2], x.shape[-1])
        maps, states = self.backbone(x)
        feats = self.neck(maps, size)
        queries = self.agent(states)
        out: dict[str, object] = {}
        if self.training and self.guidance is not None and self.diffusion is not None:
            d_weak, d_strong = self.diffusion.extract(x)
            out["guidance_losses"] = self.guidance(queries, d_weak, d_strong)
        refined = self.refiner(feats, queries)
        mask_features, memories = self.pixel_decoder(refined)
        preds = self.decoder(queries, mask_features, memories)
        class_logits, mask_logits = preds[-1]
        out.update(
            logits=semantic_inference(
                class_logits, mask_logits, size, upsample_masks=not self.training
            ),
            features=refined,
            class_logits=class_logits,
            mask_logits=mask_logits,
            aux_outputs=[{"class_logits": c, "mask_logits": m} for c, m in preds[:-1]],
        )
        return out

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """encoder: the adapters only (the ViT is frozen and in no group); decoder: neck,
        agent queries, refinement, pixel decoder, guidance projections; head: mask decoder."""
        decoder_parts: list[nn.Module] = [self.neck, self.agent, self.refiner, self.pixel_decoder]
        if self.guidance is not None:
            decoder_parts.append(self.guidance)

        def trainable(modules: list[nn.Module]) -> list[nn.Parameter]:
            return [p for m in modules for p in m.parameters() if p.requires_grad]

        return {
            "encoder": trainable([self.backbone.adapters]),
            "decoder": trainable(decoder_parts),
            "head": trainable([self.decoder]),
        }

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` without the frozen tensors (keys under ``frozen_prefixes``).

        Loading it back needs ``load_state_dict(..., strict=False)`` on a model whose frozen ViT
        came from ``cfg.pretrained``; the missing keys are then exactly the frozen ones.
        """
        return {
            k: v for k, v in self.state_dict().items() if not k.startswith(self.frozen_prefixes)
        }
