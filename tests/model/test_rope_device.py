"""RoPE tables are built on the device the model is built on (CUDA runs indexed a CPU table)."""
import torch

from podserve.model.layers import RotaryEmbedding


def test_rope_tables_follow_the_default_device():
    with torch.device("meta"):
        rope = RotaryEmbedding(head_dim=64, max_positions=128, theta=10000.0, scaling=None)
    assert rope.cos.device.type == "meta" and rope.sin.device.type == "meta"
    cpu = RotaryEmbedding(head_dim=64, max_positions=128, theta=10000.0, scaling=None)
    assert cpu.cos.device.type == "cpu" and cpu.cos.shape == (128, 32)
    assert torch.allclose(cpu.cos[1, :2], torch.cos(torch.tensor([1.0, 10000.0 ** (-2 / 64)])))
