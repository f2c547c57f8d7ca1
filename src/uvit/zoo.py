"""The paper's named models (Table 1 and section 5 of the paper; authors' configs), as a name-to-settings table.

Depth counts every block: depth // 2 "in" blocks, one "mid" block and depth // 2 "out" blocks (the authors'
configs say 12/16/20/28 and add the mid block). The text models read 77 CLIP ViT-L/14 tokens of width 768 (the
paper's parameter counts); an experiment's text model reads the tokens its encoded captions have (the dataset's
text_tokens, the encoder's width: MiniLM 384). An experiment's `model` section resolves to its zoo entry in
uvit.config.model_settings. Kept free of torch so that the DAG can validate names fast.
"""

from __future__ import annotations

# CLIP's context length: the tokens per caption unless a dataset's text_tokens says otherwise (the authors pad
# every caption to 77 for the U-ViT's context).
CONTEXT_TOKENS = 77

_SMALL = dict(embed_dim=512, depth=13, num_heads=8)
_TEXT = dict(context_dim=768, context_tokens=CONTEXT_TOKENS)

MODEL_ZOO: dict[str, dict] = {
    "U-ViT-S/2": dict(**_SMALL, patch_size=2, conv="after"),
    "U-ViT-S/4": dict(**_SMALL, patch_size=4, conv="after"),
    "U-ViT-M/4": dict(embed_dim=768, depth=17, num_heads=12, patch_size=4, conv="after"),
    "U-ViT-L/2": dict(embed_dim=1024, depth=21, num_heads=16, patch_size=2, conv="after"),
    "U-ViT-L/4": dict(embed_dim=1024, depth=21, num_heads=16, patch_size=4, conv="after"),
    "U-ViT-H/2": dict(embed_dim=1152, depth=29, num_heads=16, patch_size=2, conv="none"),
    "U-ViT-H/4": dict(embed_dim=1152, depth=29, num_heads=16, patch_size=4, conv="none"),
    "U-ViT-S/2-text": dict(**_SMALL, patch_size=2, conv="after", **_TEXT),
    "U-ViT-S/2-Deep-text": dict(embed_dim=512, depth=17, num_heads=8, patch_size=2, conv="after", **_TEXT),
}

# Parameter counts reported in the paper (millions), for the tests that check the zoo.
PAPER_PARAMS_M: dict[str, float] = {
    "U-ViT-S/2": 44,
    "U-ViT-S/4": 44,
    "U-ViT-M/4": 131,
    "U-ViT-L/2": 287,
    "U-ViT-L/4": 287,
    "U-ViT-H/2": 501,
    "U-ViT-H/4": 501,
    "U-ViT-S/2-text": 45,
    "U-ViT-S/2-Deep-text": 58,
}

# The design choices of the paper's section 3.1; the first value of each is the paper's (and the default).
# workflow/schemas/params.schema.yaml lists the same values (a test keeps the two equal).
ARCHITECTURE_CHOICES: dict[str, tuple[str, ...]] = {
    "skip": ("concat_linear", "add", "add_linear_skip", "linear_of_sum", "none"),
    "time_cond": ("token", "adaln"),
    "conv": ("after", "before", "none"),
    "patch_embed": ("linear", "conv_stack"),
    "pos_embed": ("learned", "sinusoidal_2d", "none"),
}
