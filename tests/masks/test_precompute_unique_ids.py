"""Fixed-mask precompute refuses items whose ids share a mask key, before writing anything."""

from __future__ import annotations

import pytest

from cyborgs.masks.precompute import precompute_masks
from cyborgs.masks.store import MaskStore


def test_items_sharing_a_mask_key_are_refused(tmp_path):
    calls = []

    def fn(item):
        calls.append(item["image_id"])
        raise AssertionError("nothing may be computed")

    items = [
        {"file_name": "a/7.jpg", "image_id": 7},
        {"file_name": "b/7.png", "image_id": "7"},  # int 7 and str "7": one key
    ]
    store = MaskStore(str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"a/7\.jpg and b/7\.png have the same image_id"):
        precompute_masks(fn, items, store, name="grid")
    assert calls == [] and store.rounds() == [] and store.current_round() is None
