"""The graphs a deployed model is made of, and their tensors.

Every backend runs these three graphs, every exporter writes them, and the codec sits
between them (all float32, NCHW; h = H/16, w = W/16 of the padded image)::

  forward:    image (B,3,H,W) in [0,1]      -> y (B,M,h,w), z (B,Z,h,w), w (B,Nh,h/4,w/4)
  hyper_mean: w_hat (B,Nh,h/4,w/4)          -> mu (B,M,h,w)
  inverse:    y_hat (B,M,h,w), z (B,Z,h,w)  -> image (B,3,H,W) (not clipped)

The scale branch is not a graph: the codec runs it as an exact integer network.
"""
from __future__ import annotations

from .geometry import HYPER_STRIDE, LATENT_STRIDE

#: graph name -> (input tensor names, output tensor names), in the graphs' order
GRAPHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "forward": (("image",), ("y", "z", "w")),
    "hyper_mean": (("w_hat",), ("mu",)),
    "inverse": (("y_hat", "z"), ("image",)),
}
GRAPH_NAMES: tuple[str, ...] = tuple(GRAPHS)
#: Graphs that stay fp32 in every fp16 build: mu feeds the quantiser (y_hat = round(y - mu) + mu),
#: so it must be what an fp32 decoder computes.
FP32_GRAPHS: tuple[str, ...] = ("hyper_mean",)
#: tensor name -> spatial divisor relative to the padded image
TENSOR_STRIDE: dict[str, int] = {
    "image": 1, "y": LATENT_STRIDE, "y_hat": LATENT_STRIDE, "z": LATENT_STRIDE, "mu": LATENT_STRIDE,
    "w": HYPER_STRIDE, "w_hat": HYPER_STRIDE,
}


def inputs(graph: str) -> tuple[str, ...]:
    return GRAPHS[graph][0]


def outputs(graph: str) -> tuple[str, ...]:
    return GRAPHS[graph][1]
