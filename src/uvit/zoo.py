"""The paper's named models (Table 1 of the paper; authors' configs), as a name-to-settings table.

Depth counts every block: depth // 2 "in" blocks, one "mid" block and depth // 2 "out" blocks (the authors'
configs say 12/16/20/28 and add the mid block). Kept free of torch so that the DAG can validate names fast.
"""

from __future__ import annotations

MODEL_ZOO: dict[str, dict] = {
    "U-ViT-S/2": dict(embed_dim=512, depth=13, num_heads=8, patch_size=2, conv=True),
    "U-ViT-S/4": dict(embed_dim=512, depth=13, num_heads=8, patch_size=4, conv=True),
    "U-ViT-M/4": dict(embed_dim=768, depth=17, num_heads=12, patch_size=4, conv=True),
    "U-ViT-L/2": dict(embed_dim=1024, depth=21, num_heads=16, patch_size=2, conv=True),
    "U-ViT-L/4": dict(embed_dim=1024, depth=21, num_heads=16, patch_size=4, conv=True),
    "U-ViT-H/2": dict(embed_dim=1152, depth=29, num_heads=16, patch_size=2, conv=False),
    "U-ViT-H/4": dict(embed_dim=1152, depth=29, num_heads=16, patch_size=4, conv=False),
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
}
