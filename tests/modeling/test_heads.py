"""BYOL MLP heads."""

import pytest
import torch
from torch import nn

from cyborgs.modeling.heads import MLPHead


def test_layout_and_shapes():
    head = MLPHead(96, 64, 32)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].in_features == 96 and head[0].out_features == 64
    assert head[3].out_features == 32
    out = head(torch.randn(3, 5, 96))  # leading dims are flattened for BN, then restored
    assert out.shape == (3, 5, 32)


def test_bn_sees_all_leading_vectors():
    head = MLPHead(4, 8, 2).train()
    x = torch.randn(2, 6, 4)
    torch.testing.assert_close(head(x), head(x.reshape(12, 4)).reshape(2, 6, 2))
    # BN normalises the hidden pre-activations over the 12 vectors
    hidden = head[1](head[0](x.reshape(12, 4)))
    torch.testing.assert_close(hidden.mean(0), torch.zeros(8), atol=1e-5, rtol=0)


def test_rejects_bad_dims():
    with pytest.raises(ValueError, match="hidden_dim"):
        MLPHead(4, 0, 2)


def test_syncbn_head_keeps_state_dict_keys_and_rejects_unknown_norm():
    bn, sync = MLPHead(8, 16, 4), MLPHead(8, 16, 4, norm="SyncBN")
    assert isinstance(sync[1], torch.nn.SyncBatchNorm)
    assert bn.state_dict().keys() == sync.state_dict().keys()  # EMA and export unaffected
    with pytest.raises(ValueError, match="'BN' or 'SyncBN'"):
        MLPHead(8, 16, 4, norm="GN")
