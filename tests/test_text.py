"""Text conditioning with the offline MiniLM encoder: the authors' padding to 77 tokens and the null context."""

from __future__ import annotations

import numpy as np
import pytest

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

    from uvit.data import prepare_dataset, read_manifest, read_shards
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
