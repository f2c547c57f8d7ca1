"""Text conditioning with the offline MiniLM encoder: the authors' padding to 77 tokens and the null context."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_test_params, record

from uvit.text import CONTEXT_TOKENS, TextEncoder, minilm_path


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(minilm_path())


def test_captions_become_77_tokens_of_the_encoder_width(encoder):
    contexts = encoder.encode(["a red apple", "a smiling face with sunglasses", ""])
    assert contexts.shape == (3, CONTEXT_TOKENS, 384) and contexts.dtype == np.float32
    assert np.isfinite(contexts).all()
    assert not np.allclose(contexts[0], contexts[1])


def test_null_context_is_the_empty_caption(encoder):
    np.testing.assert_array_equal(encoder.null_context(), encoder.encode([""])[0])
    assert not np.allclose(encoder.null_context(), encoder.encode(["a red apple"])[0])


def test_encoding_does_not_depend_on_the_batch(encoder):
    captions = ["a cat", "a very long caption " * 40, "two dogs playing in the snow"]
    together = encoder.encode(captions, batch_size=3)
    one_by_one = encoder.encode(captions, batch_size=1)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_long_captions_are_truncated_not_refused(encoder):
    tokens = encoder.tokenizer(
        ["word " * 500], padding="max_length", truncation=True, max_length=CONTEXT_TOKENS
    )
    assert len(tokens["input_ids"][0]) == CONTEXT_TOKENS
    assert encoder.encode(["word " * 500]).shape == (1, CONTEXT_TOKENS, 384)


def test_missing_encoder_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no text encoder here .*config.json"):
        TextEncoder(tmp_path)


def test_caption_dataset_encoding(tmp_path, encoder):
    from test_data import write_coco

    from uvit.data import prepare_dataset
    from uvit.shards import read_manifest, read_shards
    from uvit.text import encode_caption_dataset

    write_coco(tmp_path / "coco")
    prepare_dataset(
        {"source": "mscoco", "root": str(tmp_path / "coco"), "resolution": 32, "shard_size": 10},
        tmp_path / "p",
    )
    manifest = encode_caption_dataset(tmp_path / "p" / "train", minilm_path(), tmp_path / "t", shard_size=4)
    assert manifest["captions"] == 5 and manifest["images"] == 2 and manifest["context_shape"] == [77, 384]
    arrays = read_shards(tmp_path / "t", read_manifest(tmp_path / "t"), "encode_text")
    assert list(arrays["image_index"]) == [0, 0, 0, 1, 1]
    np.testing.assert_allclose(arrays["contexts"][3], encoder.encode(["image 42 caption 0"])[0], atol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / "t" / "null_context.npy"), encoder.null_context())


@pytest.fixture(scope="module")
def coco_contexts(tmp_path_factory):
    """Encoded captions of two written COCO images (three and two captions), 8 tokens each."""
    from test_data import write_coco

    from uvit.data import prepare_dataset
    from uvit.text import encode_caption_dataset

    root = tmp_path_factory.mktemp("coco")
    write_coco(root / "coco")
    cfg = {"source": "mscoco", "root": str(root / "coco"), "resolution": 32, "shard_size": 10}
    prepare_dataset(cfg, root / "p")
    encode_caption_dataset(root / "p" / "train", minilm_path(), root / "t", tokens=8)
    return root / "t"


def test_contexts_draw_one_caption_of_each_image(coco_contexts):
    import torch

    from uvit.text import Contexts

    contexts = Contexts(coco_contexts)
    assert contexts.shape == (8, 384) and contexts.null.shape == (8, 384)
    seen = {0: set(), 1: set()}
    for seed in range(40):
        drawn = contexts.of_images(torch.tensor([0, 1, 1]), torch.Generator().manual_seed(seed))
        for image, context in zip((0, 1, 1), drawn, strict=True):
            row = int(
                torch.nonzero((torch.from_numpy(contexts.contexts.all()) == context).all(-1).all(-1))[0]
            )
            seen[image].add(row)
    assert seen == {0: {0, 1, 2}, 1: {3, 4}}  # every caption of its own image, and only those
    torch.testing.assert_close(contexts.cycled([0, 6]), torch.from_numpy(contexts.contexts.take([0, 1])))


def test_text_condition_drop_uses_the_empty_caption(coco_contexts):
    import copy

    import torch

    from uvit.conditioning import Conditions
    from uvit.config import resolve_experiment

    exp = copy.deepcopy(resolve_experiment(load_test_params(), "smoke_text"))
    exp["training"]["cond_drop_prob"] = 0.5
    conditions = Conditions(record(exp), classes=1, text_dir=coco_contexts)
    cond = conditions.draw(
        torch.tensor([0, 1] * 200), torch.zeros(400, dtype=torch.long), torch.Generator().manual_seed(0)
    )
    dropped = (cond == conditions.null).flatten(1).all(1)
    assert 150 < int(dropped.sum()) < 250  # 200 expected; 5 standard deviations is 50
    assert not (cond[~dropped] == conditions.null).flatten(1).all(1).any()


def test_guidance_with_a_null_context_batches_cond_and_uncond(coco_contexts):
    import torch

    from uvit.diffusion import guided_noise_predictor, make_schedule
    from uvit.text import Contexts

    contexts = Contexts(coco_contexts)
    calls = []

    def model(x, t, cond):
        calls.append(cond)
        return x * 0 + cond.mean((1, 2)).view(-1, 1, 1, 1)

    cond = contexts.cycled([0, 3])
    eps = guided_noise_predictor(model, make_schedule("stable"), cond, contexts.null, guidance_scale=2.0)
    out = eps(torch.zeros(2, 1, 4, 4), torch.tensor(0.5))
    torch.testing.assert_close(calls[0][2:], contexts.null.expand(2, -1, -1))
    expected = 3 * cond.mean((1, 2)) - 2 * contexts.null.mean()
    torch.testing.assert_close(out[:, 0, 0, 0], expected)
