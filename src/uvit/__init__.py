"""U-ViT reproduction pipeline: "All are Worth Words: A ViT Backbone for Diffusion Models" (Bao et al., CVPR 2023).

Modules by role: `config` (params.yaml), `sources` (dataset adapters), `shards` (the prepared format),
`data` (prepare-data), `fileio` (atomic writes, checksums), `autoencoder` (latent space),
`model` (the U-ViT network), `diffusion` (schedule, loss, samplers), `training` (the training loop),
`sampling` (sample folders), `fid` (Inception features and FID), `provenance` (hashes), `tables` (the
paper's tables as data), `render` (their Markdown and LaTeX), `verify` (tables against metrics and dvc.lock),
`cli` (one command with a subcommand per pipeline stage).
"""

__version__ = "0.1.0"
